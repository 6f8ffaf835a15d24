"""Derived tasks for the meta-dataset: smaller, coarser, grey or shorter versions of prepared sets.

    python -m offline tasks --sources cifar10 omniglot brain_mri

A meta-dataset of 15 datasets is too small to learn a config choice from; tasks derived from
them add the variation that decides which config wins at short budgets: fewer classes, fewer
training examples per class, a lower resolution, one channel, shorter clips. Each task is a
complete AutoDL dataset written by the harness's own writer beside its source (in `--data-dir`,
so every command that takes prepared dataset names takes tasks too), named after its
source and what was changed, e.g. `cifar10__c5_n20` (5 of the classes, 20 training examples per
class) or `caltech101__r32_gray`. The test set keeps every record of a kept class; the
solution is rebuilt for the kept classes. Tasks already written are skipped, so a run resumes.
"""
from __future__ import annotations

import argparse
import io
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ingestion_local.dataset import AutoDLDataset, AutoDLMetadata, find_data_dir
from ingestion_local.logs import setup_logging
from ingestion_local.prepare import DEFAULT_OUT
from ingestion_local.variants import frame_features, read_records, record_labels
from ingestion_local.writer import AutoDLWriter, ConversionError, Sample
from offline.cli import command_parser

logger = logging.getLogger(__name__)

SOURCE_SEPARATOR = "__"  # a derived task's name: its source, this, then what changed


def source_of(task: str) -> str:
    """The prepared dataset a task was derived from (a source is its own source)."""
    return task.split(SOURCE_SEPARATOR, 1)[0]


@dataclass(frozen=True)
class TaskSpec:
    """One derived task: which source, and what is changed (None: kept as it is)."""

    source: str
    classes: int | None = None      # keep this many classes, drawn at random
    per_class: int | None = None    # at most this many training examples per class
    side: int | None = None         # longest image side, pixels (only ever made smaller)
    grayscale: bool = False
    frames: int | None = None       # at most this many frames per clip, evenly spaced
    seed: int = 0

    def __post_init__(self) -> None:
        for field_name in ("classes", "per_class", "side", "frames"):
            value = getattr(self, field_name)
            if value is not None and value < (2 if field_name == "classes" else 1):
                raise ConversionError(f"task of {self.source}: {field_name} must be "
                                      f"{'at least 2' if field_name == 'classes' else 'positive'},"
                                      f" got {value}")

    @property
    def name(self) -> str:
        parts = [f"c{self.classes}" if self.classes else "",
                 f"n{self.per_class}" if self.per_class else "",
                 f"r{self.side}" if self.side else "",
                 "gray" if self.grayscale else "",
                 f"f{self.frames}" if self.frames else ""]
        changes = "_".join(part for part in parts if part)
        return f"{self.source}{SOURCE_SEPARATOR}{changes}" if changes else self.source


def default_suite(source: str, metadata: AutoDLMetadata) -> list[TaskSpec]:
    """The derived tasks of one source: a few-shot one (at most 20 classes, 10 training
    examples per class) and a coarse one (half the resolution, grey, a quarter of the frames)."""
    output_dim = metadata.get_output_size()
    few_shot = TaskSpec(source, classes=20 if output_dim > 20 else None, per_class=10)
    side = max(metadata.get_matrix_size())
    sequence = metadata.get_sequence_size()
    coarse = TaskSpec(source, side=max(16, side // 2) if side > 0 else 32,
                      grayscale=metadata.get_num_channels() > 1,
                      frames=max(1, sequence // 4) if sequence > 1 else None)
    return [few_shot, coarse]


def _reencode(encoded: bytes, spec: TaskSpec) -> tuple[bytes, tuple[int, int, int]]:
    """The frame with the task's resolution and channels, and its (row, col, channel)."""
    with Image.open(io.BytesIO(encoded)) as image:
        fmt = image.format or "PNG"
        changed = image
        if spec.grayscale and image.mode != "L":
            changed = image.convert("L")
        if spec.side and max(image.size) > spec.side:
            scale = spec.side / max(image.size)
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            changed = changed.resize(size, Image.BILINEAR)
        channels = {"L": 1, "LA": 2, "RGBA": 4}.get(changed.mode, 3)
        shape = (changed.height, changed.width, channels)
        if changed is image:
            return encoded, shape
        if fmt == "JPEG" and changed.mode not in ("L", "RGB"):
            changed = changed.convert("RGB")
        buffer = io.BytesIO()
        changed.save(buffer, format="JPEG" if fmt == "JPEG" else "PNG",
                     **({"quality": 90} if fmt == "JPEG" else {}))
        return buffer.getvalue(), shape


def _sample(frames: list[bytes], labels: tuple[int, ...], spec: TaskSpec) -> Sample:
    if spec.frames and len(frames) > spec.frames:
        keep = np.linspace(0, len(frames) - 1, spec.frames).round().astype(int)
        frames = [frames[i] for i in keep]
    encoded, shapes = zip(*(_reencode(frame, spec) for frame in frames))
    row, col, channels = shapes[0]
    return Sample(list(encoded), (len(encoded), row, col, channels), labels)


def _kept_training(labels: list[list[int]], kept: dict[int, int], per_class: int | None,
                   rng: np.random.Generator) -> list[int]:
    """Indices of the training records to keep, in their original order."""
    candidates = [i for i, row in enumerate(labels) if any(label in kept for label in row)]
    if per_class is None:
        return candidates
    by_class: dict[int, list[int]] = {}
    for i in candidates:
        by_class.setdefault(next(label for label in labels[i] if label in kept), []).append(i)
    chosen = [i for members in by_class.values()
              for i in rng.permutation(members)[:per_class].tolist()]
    return sorted(chosen)


def derive_task(dataset_dir: str | Path, spec: TaskSpec, out_dir: str | Path,
                overwrite: bool = False) -> Path:
    """Write `spec`'s task of the prepared dataset in `dataset_dir` as `OUT/<spec.name>`."""
    dataset_dir = Path(dataset_dir)
    data_dir = find_data_dir(dataset_dir)
    source = data_dir.name[:-len(".data")]
    metadata = AutoDLDataset(data_dir / "train").get_metadata()
    output_dim = metadata.get_output_size()
    rng = np.random.default_rng(spec.seed)
    if spec.classes and spec.classes > output_dim:
        raise ConversionError(f"{spec.name}: {source} has {output_dim} classes, "
                              f"{spec.classes} asked")
    classes = (sorted(rng.choice(output_dim, spec.classes, replace=False).tolist())
               if spec.classes else list(range(output_dim)))
    kept = {old: new for new, old in enumerate(classes)}

    train = read_records(data_dir / "train")
    train_labels = [record_labels(example) for example in train]
    train_rows = _kept_training(train_labels, kept, spec.per_class, rng)
    test = read_records(data_dir / "test")
    solution = np.loadtxt(dataset_dir / f"{source}.solution", ndmin=2)
    if len(solution) != len(test):
        raise ConversionError(f"{source}: {len(solution)} solution rows for {len(test)} test "
                              f"records")
    test_labels = [np.flatnonzero(row).tolist() for row in solution]
    test_rows = [i for i, row in enumerate(test_labels) if any(label in kept for label in row)]

    def samples(records, labels, rows) -> Iterator[Sample]:
        for i in rows:
            frames = [frame.bytes_list.value[0] for frame in frame_features(records[i])]
            yield _sample(frames, tuple(kept[label] for label in labels[i] if label in kept),
                          spec)

    names_file = dataset_dir / f"{source}_label.name"
    label_names = None
    if names_file.is_file():
        names = names_file.read_text().splitlines()
        label_names = [names[old] for old in classes] if len(names) == output_dim else None
    writer = AutoDLWriter(spec.name, out_dir, output_dim=len(classes), compressed=True,
                          num_channels=1 if spec.grayscale else metadata.get_num_channels(),
                          label_names=label_names, overwrite=overwrite, progress=False)
    return writer.write(samples(test, test_labels, test_rows),
                        samples(train, train_labels, train_rows),
                        n_test=len(test_rows), n_train=len(train_rows))


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments (tests parse the README's command lines with it)."""
    parser = command_parser("python -m offline tasks", __doc__)
    parser.add_argument("--sources", nargs="+", required=True,
                        help="prepared dataset names under --data-dir")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_OUT,
                        help="folder of prepared AutoDL datasets")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder the derived tasks are written to (default: --data-dir)")
    parser.add_argument("--seed", type=int, default=0, help="draws the classes and examples")
    parser.add_argument("--overwrite", action="store_true", help="write existing tasks again")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging()
    specs = []
    for source in args.sources:
        source_dir = args.data_dir / source
        if not source_dir.is_dir():
            parser.error(f"{source_dir} is not a prepared dataset (python -m "
                         f"ingestion_local.prepare --only {source})")
        metadata = AutoDLDataset(find_data_dir(source_dir) / "train").get_metadata()
        specs += [replace(spec, seed=args.seed) for spec in default_suite(source, metadata)]
    out = args.out or args.data_dir
    for spec in tqdm(specs, desc="tasks", unit="task"):
        if (out / spec.name).is_dir() and not args.overwrite:
            logger.info("%s: already written", spec.name)
            continue
        derive_task(args.data_dir / spec.source, spec, out, overwrite=args.overwrite)
    return 0
