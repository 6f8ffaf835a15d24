"""Writer of the AutoDL dataset format, following the platform's converter conventions.

Layout written: `OUT/<name>/<name>.data/{train,test}/{metadata.textproto,sample-<name>-<subset>.tfrecord}`
and `OUT/<name>/<name>.solution` (plus `<name>_label.name` when class names are known).
Conventions: the test subset is written first with ids 0..n_test-1 and empty label lists, train
ids follow; row = height and col = width; -1 marks a size that varies; `num_channels` is explicit.
The dataset is built in a hidden folder beside its destination and moved into place only when
complete, so an error or an interruption never leaves a half-written dataset.
"""
from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from ingestion_local import data_spec

logger = logging.getLogger(__name__)


class ConversionError(ValueError):
    """Input that cannot be converted; the message names the offending file or row."""


@dataclass(frozen=True)
class Sample:
    """One example to write.

    `frames` is a list of encoded images (bytes, JPEG or PNG, one per time step) for the
    compressed format, or a float array `[sequence, row, col, channel]` for the dense one.
    `shape` is `(sequence, row, col, channel)` of the decoded example; `labels` are class ids.
    `source` names where the example came from, for error messages.
    """

    frames: list[bytes] | np.ndarray
    shape: tuple[int, int, int, int]
    labels: tuple[int, ...]
    source: str = ""


@dataclass
class _SizeTracker:
    """Common value of a size over all samples, or -1 once two samples differ."""

    values: set = field(default_factory=set)

    def add(self, value: int) -> None:
        self.values.add(int(value))

    def common(self) -> int:
        return self.values.pop() if len(self.values) == 1 else -1


def _int64_feature(values: Sequence[int]) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))


def _float_feature(values: Sequence[float]) -> tf.train.Feature:
    return tf.train.Feature(float_list=tf.train.FloatList(value=list(values)))


def _bytes_feature(values: Sequence[bytes]) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def _serialize(sample: Sample, sample_id: int, is_test: bool, compressed: bool) -> bytes:
    labels = () if is_test else sample.labels
    context = tf.train.Features(feature={
        "id": _int64_feature([sample_id]),
        "label_index": _int64_feature(labels),
        "label_score": _float_feature([1.0] * len(labels)),
    })
    if compressed:
        frames = [_bytes_feature([frame]) for frame in sample.frames]
        key = "0_compressed"
    else:
        dense = np.asarray(sample.frames, dtype=np.float32)
        frames = [_float_feature(frame.ravel()) for frame in dense]
        key = "0_dense_input"
    feature_lists = tf.train.FeatureLists(
        feature_list={key: tf.train.FeatureList(feature=frames)})
    return tf.train.SequenceExample(context=context,
                                    feature_lists=feature_lists).SerializeToString()


def move_into_place(staging: Path, destination: Path) -> None:
    """Replace `destination` with the complete dataset in `staging`, keeping the old one until
    the new one is in place."""
    if destination.exists():
        retired = destination.with_name(f".{destination.name}.replaced")
        shutil.rmtree(retired, ignore_errors=True)
        destination.rename(retired)
        staging.rename(destination)
        shutil.rmtree(retired)
    else:
        staging.rename(destination)


class AutoDLWriter:
    """Writes one dataset in the AutoDL format.

    >>> AutoDLWriter("digits", "out", output_dim=10, compressed=True).write(test, train)
    """

    def __init__(self, name: str, out_dir: str | os.PathLike, output_dim: int, *,
                 compressed: bool, num_channels: int | None = None,
                 label_names: Sequence[str] | None = None, overwrite: bool = False,
                 progress: bool = True) -> None:
        if not name or os.sep in name or name.startswith("."):
            raise ConversionError(f"invalid dataset name {name!r}")
        if output_dim <= 0:
            raise ConversionError(f"{name}: output_dim must be positive, got {output_dim}")
        if label_names is not None and len(label_names) != output_dim:
            raise ConversionError(f"{name}: {len(label_names)} class names for output_dim "
                                  f"{output_dim}")
        self.name = name
        self.out_dir = Path(out_dir)
        self.output_dim = output_dim
        self.compressed = compressed
        self.num_channels = num_channels
        self.label_names = list(label_names) if label_names is not None else None
        self.overwrite = overwrite
        self.progress = progress

    @property
    def destination(self) -> Path:
        return self.out_dir / self.name

    def write(self, test_samples: Iterable[Sample], train_samples: Iterable[Sample], *,
              n_test: int | None = None, n_train: int | None = None) -> Path:
        """Write the test subset, then the train subset; return `OUT/<name>`."""
        if self.destination.exists() and not self.overwrite:
            raise ConversionError(f"{self.destination} already exists (pass overwrite=True "
                                  f"or --overwrite to replace it)")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        staging = self.out_dir / f".{self.name}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            self._write_into(staging, test_samples, train_samples, n_test, n_train)
            move_into_place(staging, self.destination)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return self.destination

    def _write_into(self, root: Path, test_samples: Iterable[Sample],
                    train_samples: Iterable[Sample], n_test: int | None,
                    n_train: int | None) -> None:
        data_dir = root / f"{self.name}.data"
        sizes = {key: _SizeTracker() for key in ("sequence", "row", "col")}
        channels_seen: set[int] = set()
        solution_rows: list[np.ndarray] = []
        counts = {}
        next_id = 0
        for subset, samples, total in (("test", test_samples, n_test),
                                       ("train", train_samples, n_train)):
            subset_dir = data_dir / subset
            subset_dir.mkdir(parents=True)
            record_path = subset_dir / f"sample-{self.name}-{subset}.tfrecord"
            count = 0
            with tf.io.TFRecordWriter(str(record_path)) as records:
                for sample in tqdm(samples, total=total, desc=f"{self.name} {subset}",
                                   unit="sample", disable=not self.progress, leave=False):
                    self._check_sample(sample)
                    for key, value in zip(("sequence", "row", "col"), sample.shape[:3]):
                        sizes[key].add(value)
                    channels_seen.add(sample.shape[3])
                    records.write(_serialize(sample, next_id, subset == "test", self.compressed))
                    if subset == "test":
                        row = np.zeros(self.output_dim)
                        row[list(sample.labels)] = 1
                        solution_rows.append(row)
                    next_id += 1
                    count += 1
            if count == 0:
                raise ConversionError(f"{self.name}: the {subset} subset is empty")
            counts[subset] = count

        num_channels = self.num_channels or max(channels_seen)
        sequence_size, row_count, col_count = (sizes[key].common()
                                               for key in ("sequence", "row", "col"))
        if not self.compressed and -1 in (row_count, col_count):
            raise ConversionError(f"{self.name}: dense data needs one image size for all "
                                  f"samples; encode variable sizes as compressed images")
        for subset, count in counts.items():
            spec = self._data_spec(count, sequence_size, row_count, col_count, num_channels)
            (data_dir / subset / "metadata.textproto").write_text(data_spec.format_data_spec(spec))
        np.savetxt(root / f"{self.name}.solution", np.asarray(solution_rows), fmt="%.0f")
        if self.label_names is not None:
            (root / f"{self.name}_label.name").write_text("\n".join(self.label_names) + "\n")
        logger.info("%s: wrote %d test and %d train samples, shape (%d, %d, %d, %d), %d classes",
                    self.name, counts["test"], counts["train"], sequence_size, row_count,
                    col_count, num_channels, self.output_dim)

    def _check_sample(self, sample: Sample) -> None:
        where = sample.source or "a sample"
        bad = [label for label in sample.labels if not 0 <= label < self.output_dim]
        if bad:
            raise ConversionError(f"{where}: label(s) {bad} outside 0..{self.output_dim - 1}")
        if not sample.labels:
            raise ConversionError(f"{where}: no label")
        if self.compressed and len(sample.frames) != sample.shape[0]:
            raise ConversionError(f"{where}: {len(sample.frames)} frames but shape says "
                                  f"{sample.shape[0]}")

    def _data_spec(self, sample_count: int, sequence_size: int, row_count: int, col_count: int,
                   num_channels: int):
        spec = data_spec.DataSpecification(
            is_sequence=False, sample_count=sample_count, sequence_size=sequence_size,
            output_dim=self.output_dim)
        spec.matrix_spec.add(
            col_count=col_count, row_count=row_count, num_channels=num_channels,
            is_sequence_col=False, is_sequence_row=False, has_locality_col=True,
            has_locality_row=True,
            format=data_spec.COMPRESSED if self.compressed else data_spec.DENSE)
        for index, label_name in enumerate(self.label_names or ()):
            spec.label_to_index_map[label_name] = index
        return spec

