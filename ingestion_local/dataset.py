"""Reader of the AutoDL dataset format, in TensorFlow 2 (eager), with the platform's API.

`AutoDLDataset(subset_dir)` reads `<subset_dir>/metadata.textproto` and every `sample*` file in
`<subset_dir>` (TFRecords of `tf.train.SequenceExample`). `get_dataset()` yields
`(example, labels)`: example float32 `[sequence, row, col, channel]` in [0, 1] for compressed
images, labels float32 `[output_dim]` (all zeros on a test set, whose records carry no labels).
Unknown sizes (-1 in the metadata) are `None` in the element spec.
"""
from __future__ import annotations

import glob
import os
from pathlib import Path

import tensorflow as tf

from ingestion_local import data_spec

NUM_PARALLEL_READERS = 3


class DatasetFormatError(ValueError):
    """A dataset on disk does not follow the AutoDL format; the message names the file."""


class AutoDLMetadata:
    """Metadata of one subset (`<name>.data/train` or `.../test`), parsed from metadata.textproto."""

    def __init__(self, dataset_name: str | os.PathLike) -> None:
        self.dataset_name_ = str(dataset_name)
        path = Path(dataset_name) / "metadata.textproto"
        if not path.is_file():
            raise DatasetFormatError(f"{path}: metadata file not found")
        self.metadata_ = data_spec.parse_data_spec(path.read_text(), source=str(path))
        if not self.metadata_.matrix_spec:
            raise DatasetFormatError(f"{path}: no matrix_spec")
        if self.metadata_.output_dim <= 0:
            raise DatasetFormatError(f"{path}: output_dim must be positive, "
                                     f"got {self.metadata_.output_dim}")

    def get_dataset_name(self) -> str:
        return self.dataset_name_

    def is_compressed(self, bundle_index: int = 0) -> bool:
        return self.metadata_.matrix_spec[bundle_index].format == data_spec.COMPRESSED

    def is_sparse(self, bundle_index: int = 0) -> bool:
        return self.metadata_.matrix_spec[bundle_index].format == data_spec.SPARSE

    def get_bundle_size(self) -> int:
        return len(self.metadata_.matrix_spec)

    def get_matrix_size(self, bundle_index: int = 0) -> tuple[int, int]:
        spec = self.metadata_.matrix_spec[bundle_index]
        return spec.row_count, spec.col_count

    def get_num_channels(self, bundle_index: int = 0) -> int:
        num_channels = self.metadata_.matrix_spec[bundle_index].num_channels
        if num_channels == -1:
            return 3 if self.is_compressed(bundle_index) else 1
        return num_channels

    def get_tensor_size(self, bundle_index: int = 0) -> tuple[int, int, int]:
        row_count, col_count = self.get_matrix_size(bundle_index)
        return row_count, col_count, self.get_num_channels(bundle_index)

    def get_tensor_shape(self, bundle_index: int = 0) -> tuple[int, int, int, int]:
        return (self.get_sequence_size(),) + self.get_tensor_size(bundle_index)

    def get_sequence_size(self) -> int:
        return self.metadata_.sequence_size

    def get_output_size(self) -> int:
        return self.metadata_.output_dim

    def size(self) -> int:
        return self.metadata_.sample_count

    def get_label_to_index_map(self) -> dict[str, int]:
        return dict(self.metadata_.label_to_index_map)

    def get_channel_to_index_map(self) -> dict[str, int]:
        return dict(self.metadata_.channel_to_index_map)

    def get_feature_to_index_map(self) -> dict[str, int]:
        return dict(self.metadata_.feature_to_index_map)


def _known(size: int) -> int | None:
    return size if size > 0 else None


class AutoDLDataset:
    """One subset of an AutoDL dataset, served as a `tf.data.Dataset` like the platform does."""

    def __init__(self, dataset_name: str | os.PathLike) -> None:
        self.dataset_name_ = str(dataset_name)
        self.metadata_ = AutoDLMetadata(dataset_name)
        self.files_ = sorted(glob.glob(os.path.join(self.dataset_name_, "sample*")))
        if not self.files_:
            raise DatasetFormatError(f"{self.dataset_name_}: no 'sample*' record file")
        self.dataset_ = self._create_dataset()

    def get_dataset(self) -> tf.data.Dataset:
        """The (example, labels) dataset: not batched, shuffled or repeated."""
        return self.dataset_

    def get_metadata(self) -> AutoDLMetadata:
        return self.metadata_

    def get_files(self) -> list[str]:
        return list(self.files_)

    def check_records(self) -> int:
        """Read every record's framing and checksum; return the record count.

        A corrupt or truncated file raises DatasetFormatError naming the file and record,
        which tf.data alone does not do once several files are interleaved.
        """
        total = 0
        for path in self.files_:
            count = 0
            try:
                for _ in tf.data.TFRecordDataset(path):
                    count += 1
            except tf.errors.DataLossError as err:
                raise DatasetFormatError(
                    f"{path}: corrupt record after {count} good records: {err.message}") from err
            total += count
        if total != self.metadata_.size():
            raise DatasetFormatError(
                f"{self.dataset_name_}: {total} records in {len(self.files_)} file(s) but "
                f"metadata.textproto says sample_count: {self.metadata_.size()}")
        return total

    def _create_dataset(self) -> tf.data.Dataset:
        if len(self.files_) > 1:
            records = tf.data.Dataset.from_tensor_slices(self.files_).interleave(
                tf.data.TFRecordDataset, cycle_length=NUM_PARALLEL_READERS,
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        else:
            records = tf.data.TFRecordDataset(self.files_, num_parallel_reads=NUM_PARALLEL_READERS)
        return records.map(self._parse_function, num_parallel_calls=tf.data.AUTOTUNE,
                           deterministic=True)

    def _feature_spec(self) -> dict:
        features = {}
        for i in range(self.metadata_.get_bundle_size()):
            if self.metadata_.is_sparse(i):
                features[f"{i}_sparse_col_index"] = tf.io.VarLenFeature(tf.int64)
                features[f"{i}_sparse_row_index"] = tf.io.VarLenFeature(tf.int64)
                features[f"{i}_sparse_channel_index"] = tf.io.VarLenFeature(tf.int64)
                features[f"{i}_sparse_value"] = tf.io.VarLenFeature(tf.float32)
            elif self.metadata_.is_compressed(i):
                features[f"{i}_compressed"] = tf.io.FixedLenSequenceFeature([], dtype=tf.string)
            else:
                row_count, col_count = self.metadata_.get_matrix_size(i)
                if row_count <= 0 or col_count <= 0:
                    raise DatasetFormatError(
                        f"{self.dataset_name_}/metadata.textproto: dense data needs known "
                        f"row_count and col_count, got {row_count} x {col_count}")
                features[f"{i}_dense_input"] = tf.io.FixedLenSequenceFeature(
                    self.metadata_.get_tensor_size(i), dtype=tf.float32)
        return features

    def _parse_function(self, serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        context, sequence = tf.io.parse_single_sequence_example(
            serialized,
            context_features={"label_index": tf.io.VarLenFeature(tf.int64),
                              "label_score": tf.io.VarLenFeature(tf.float32)},
            sequence_features=self._feature_spec())
        examples = [self._bundle_tensor(i, sequence)
                    for i in range(self.metadata_.get_bundle_size())]
        label_index = context["label_index"].values
        labels = tf.sparse.to_dense(
            tf.SparseTensor(indices=tf.expand_dims(label_index, -1),
                            values=context["label_score"].values,
                            dense_shape=[self.metadata_.get_output_size()]),
            validate_indices=False)
        return (*examples, labels)

    def _bundle_tensor(self, i: int, sequence: dict) -> tf.Tensor:
        sequence_size = self.metadata_.get_sequence_size()
        row_count, col_count, num_channels = self.metadata_.get_tensor_size(i)
        if self.metadata_.is_sparse(i):
            return self._sparse_tensor(i, sequence, col_count, num_channels)
        if self.metadata_.is_compressed(i):
            frames = sequence[f"{i}_compressed"]
            decoded = tf.map_fn(
                lambda frame: tf.image.convert_image_dtype(
                    tf.image.decode_image(frame, channels=num_channels, expand_animations=False),
                    tf.float32),
                frames, fn_output_signature=tf.float32)
            decoded.set_shape([_known(sequence_size), _known(row_count), _known(col_count),
                               num_channels])
            return decoded
        dense = sequence[f"{i}_dense_input"]
        return tf.reshape(dense, [-1 if sequence_size <= 0 else sequence_size,
                                  row_count, col_count, num_channels])

    @staticmethod
    def _sparse_tensor(i: int, sequence: dict, col_count: int, num_channels: int) -> tf.Tensor:
        # The platform's odd dense layouts for sparse bundles: tabular data becomes
        # [1, nnz, 2, 1] (column index, value) pairs, text becomes [nnz, 1, 1, 1] indices.
        col_index = tf.cast(tf.sparse.to_dense(sequence[f"{i}_sparse_col_index"]), tf.float32)
        channel_index = tf.cast(tf.sparse.to_dense(sequence[f"{i}_sparse_channel_index"]),
                                tf.float32)
        values = tf.sparse.to_dense(sequence[f"{i}_sparse_value"])
        if col_count > num_channels:
            pairs = tf.stack([tf.reshape(col_index, [-1]), tf.reshape(values, [-1])], axis=-1)
            return tf.reshape(pairs, [1, -1, 2, 1])
        return tf.reshape(channel_index, [-1, 1, 1, 1])


def find_data_dir(dataset_dir: str | os.PathLike) -> Path:
    """The single `*.data` folder in `dataset_dir`; a clear error when there is none or several."""
    found = sorted(Path(dataset_dir).glob("*.data"))
    if len(found) != 1:
        listing = ", ".join(p.name for p in found) or "none"
        raise DatasetFormatError(
            f"{dataset_dir}: expected exactly one '*.data' folder, found {len(found)} ({listing})")
    return found[0]


def find_solution_file(solution_dir: str | os.PathLike) -> Path:
    """The single `*.solution` file in `solution_dir`."""
    found = sorted(Path(solution_dir).glob("*.solution"))
    if len(found) != 1:
        listing = ", ".join(p.name for p in found) or "none"
        raise DatasetFormatError(
            f"{solution_dir}: expected exactly one '*.solution' file, found {len(found)} "
            f"({listing})")
    return found[0]
