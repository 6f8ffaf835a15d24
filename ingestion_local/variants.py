"""Derived copies of an AutoDL dataset that reproduce how data arrives in the wild.

    python -m ingestion_local.prepare --only cifar10 --class-order --near-copies 5 --corrupt 0.03

Each variant reads a prepared dataset's records and writes a new dataset beside it:
- `class_order`: the training records sorted by class (first label), as a dataset converted
  from one folder per class arrives; test records and solution unchanged.
- `near_copies`: training made of groups of `k` jittered copies of one source image (a shift of
  a few pixels and a brightness change), like frames of one object or bursts of one scene; the
  training set keeps its size (N / k sources x k copies), the test set keeps its own sources.
- `corrupt`: a share of the training and of the test records hold undecodable image bytes
  (truncated, garbage, or the format's header only); the solution is unchanged, so a test
  record that cannot be decoded still needs its prediction row.

Records are rewritten as `tf.train.SequenceExample`s: only the fields a variant changes are
touched, ids included. A variant is built in a hidden folder and moved into place when complete.
"""
from __future__ import annotations

import io
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

from ingestion_local.dataset import AutoDLDataset, find_data_dir
from ingestion_local.writer import ConversionError, move_into_place

logger = logging.getLogger(__name__)

FRAMES_KEY = "0_compressed"
CORRUPTIONS = ("truncated", "garbage", "header_only")
# What is left of a file of each format when only its header survives.
HEADER_BYTES = 24
MAX_SHIFT = 2           # pixels, of a near copy
MAX_BRIGHTNESS = 0.1    # relative change of a near copy


@dataclass(frozen=True)
class Variant:
    """One way to derive a dataset: its name suffix and what it does to the records."""

    suffix: str
    train: Callable[[list[tf.train.SequenceExample], np.random.Generator],
                    list[tf.train.SequenceExample]]
    test: Callable[[list[tf.train.SequenceExample], np.random.Generator],
                   list[tf.train.SequenceExample]] | None = None


def read_records(subset_dir: Path) -> list[tf.train.SequenceExample]:
    files = AutoDLDataset(subset_dir).get_files()
    return [tf.train.SequenceExample.FromString(record.numpy())
            for record in tf.data.TFRecordDataset(files)]


def record_labels(example: tf.train.SequenceExample) -> list[int]:
    """The class ids of a record (empty for a test record)."""
    return [int(label) for label in example.context.feature["label_index"].int64_list.value]


def _first_label(example: tf.train.SequenceExample) -> int:
    labels = record_labels(example)
    return labels[0] if labels else -1


def frame_features(example: tf.train.SequenceExample):
    if FRAMES_KEY not in example.feature_lists.feature_list:
        raise ConversionError("only compressed (JPEG/PNG) datasets can be derived this way")
    return example.feature_lists.feature_list[FRAMES_KEY].feature


def sort_by_class(examples: list[tf.train.SequenceExample],
                  rng: np.random.Generator) -> list[tf.train.SequenceExample]:
    """The records sorted by first label; the original order is kept within a class."""
    return sorted(examples, key=_first_label)


def _jitter(encoded: bytes, shift: tuple[int, int], brightness: float) -> bytes:
    with Image.open(io.BytesIO(encoded)) as image:
        fmt = image.format or "PNG"
        pixels = np.asarray(image.convert("L" if image.mode in ("1", "L", "I;16") else "RGB"))
    moved = np.roll(pixels, shift, axis=(0, 1)).astype(np.float32) * (1 + brightness)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(moved, 0, 255).astype(np.uint8)).save(
        buffer, format="JPEG" if fmt == "JPEG" else "PNG", quality=92)
    return buffer.getvalue()


def near_copy_groups(copies: int) -> Callable:
    """`copies` jittered copies of each of N / copies randomly drawn source records."""
    if copies < 2:
        raise ConversionError(f"near copies: need at least 2 copies per source, got {copies}")

    def transform(examples: list[tf.train.SequenceExample],
                  rng: np.random.Generator) -> list[tf.train.SequenceExample]:
        sources = rng.choice(len(examples), -(-len(examples) // copies), replace=False)
        derived = []
        for source in sources:
            for _ in range(copies):
                copy = tf.train.SequenceExample()
                copy.CopyFrom(examples[source])
                shift = tuple(int(v) for v in rng.integers(-MAX_SHIFT, MAX_SHIFT + 1, 2))
                brightness = float(rng.uniform(-MAX_BRIGHTNESS, MAX_BRIGHTNESS))
                for frame in frame_features(copy):
                    frame.bytes_list.value[0] = _jitter(frame.bytes_list.value[0], shift,
                                                        brightness)
                derived.append(copy)
        derived = [derived[i] for i in rng.permutation(len(derived))][:len(examples)]
        for example, original in zip(derived, examples):  # ids stay those of the subset
            example.context.feature["id"].CopyFrom(original.context.feature["id"])
        return derived
    return transform


def corrupt_bytes(encoded: bytes, kind: str, rng: np.random.Generator) -> bytes:
    """`encoded` made undecodable in the way `kind` names."""
    if kind == "truncated":
        return encoded[:max(HEADER_BYTES + 1, len(encoded) // 3)]
    if kind == "garbage":
        return rng.integers(0, 256, max(64, len(encoded)), dtype=np.uint8).tobytes()
    if kind == "header_only":
        return encoded[:HEADER_BYTES]
    raise ValueError(f"unknown corruption {kind!r}; known: {', '.join(CORRUPTIONS)}")


def corrupt_share(share: float) -> Callable:
    """A `share` of the records (at least one) with the first frame corrupted, the kinds in
    turn."""
    if not 0 < share < 1:
        raise ConversionError(f"corrupt: the share must be in (0, 1), got {share}")

    def transform(examples: list[tf.train.SequenceExample],
                  rng: np.random.Generator) -> list[tf.train.SequenceExample]:
        chosen = rng.choice(len(examples), max(1, round(share * len(examples))), replace=False)
        for turn, index in enumerate(sorted(chosen)):
            frame = frame_features(examples[index])[0]
            frame.bytes_list.value[0] = corrupt_bytes(frame.bytes_list.value[0],
                                                      CORRUPTIONS[turn % len(CORRUPTIONS)], rng)
        return examples
    return transform


def class_order_variant() -> Variant:
    return Variant("sorted", sort_by_class)


def near_copies_variant(copies: int) -> Variant:
    return Variant(f"copies{copies}", near_copy_groups(copies))


def corrupt_variant(share: float) -> Variant:
    return Variant(f"corrupt{round(100 * share):d}", corrupt_share(share), corrupt_share(share))


def derive(dataset_dir: str | Path, out_dir: str | Path, variant: Variant, seed: int = 0,
           overwrite: bool = False) -> Path:
    """Write `variant` of the dataset in `dataset_dir` (holding `<name>.data`) as
    `OUT/<name>_<suffix>`; return that folder."""
    data_dir = find_data_dir(dataset_dir)
    name = data_dir.name[:-len(".data")]
    derived = f"{name}_{variant.suffix}"
    out_dir = Path(out_dir)
    destination = out_dir / derived
    if destination.exists() and not overwrite:
        raise ConversionError(f"{destination} already exists (pass overwrite=True to replace)")
    staging = out_dir / f".{derived}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    rng = np.random.default_rng(seed)
    try:
        for subset in ("test", "train"):
            transform = variant.train if subset == "train" else variant.test
            target = staging / f"{derived}.data" / subset
            target.mkdir(parents=True)
            shutil.copy(data_dir / subset / "metadata.textproto", target)
            examples = read_records(data_dir / subset)
            if transform is not None:
                examples = transform(examples, rng)
            with tf.io.TFRecordWriter(str(target / f"sample-{derived}-{subset}.tfrecord")) as out:
                for example in examples:
                    out.write(example.SerializeToString())
        shutil.copy(Path(dataset_dir) / f"{name}.solution", staging / f"{derived}.solution")
        for label_file in Path(dataset_dir).glob(f"{name}_label.name"):
            shutil.copy(label_file, staging / f"{derived}_label.name")
        move_into_place(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("%s: written from %s", derived, name)
    return destination
