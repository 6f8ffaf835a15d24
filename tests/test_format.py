"""The AutoDL format: reading the platform's real samples, writing, round trips, bad input."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import AUTODL_SAMPLES, shared_path
from ingestion_local import AutoDLDataset, AutoDLMetadata, DatasetFormatError
from ingestion_local.convert import convert_folder, write_arrays
from ingestion_local.dataset import find_data_dir
from ingestion_local.writer import ConversionError

# (name, subset size train/test, tensor shape from the metadata, element spec shape, output_dim)
REAL_SAMPLES = [
    ("miniciao", 82, 18, (1, 32, 32, 3), (1, 32, 32, 3), 10),
    ("Monkeys", 26, 4, (1, -1, -1, 3), (1, None, None, 3), 10),
    ("mini1", 50, 10, (1, 28, 28, 1), (1, 28, 28, 1), 10),
]


def read_all(subset_dir: Path) -> tuple[list[np.ndarray], np.ndarray]:
    examples, labels = [], []
    for example, label in AutoDLDataset(subset_dir).get_dataset():
        examples.append(example.numpy())
        labels.append(label.numpy())
    return examples, np.array(labels)


@pytest.mark.parametrize("name,n_train,n_test,shape,spec_shape,output_dim", REAL_SAMPLES)
def test_real_samples_read_with_platform_shapes(name, n_train, n_test, shape, spec_shape,
                                                output_dim):
    data_dir = shared_path("autodl_samples", name, f"{name}.data")
    for subset, count in (("train", n_train), ("test", n_test)):
        dataset = AutoDLDataset(data_dir / subset)
        metadata = dataset.get_metadata()
        assert metadata.size() == count
        assert metadata.get_tensor_shape() == shape
        assert metadata.get_output_size() == output_dim
        example_spec, label_spec = dataset.get_dataset().element_spec
        assert tuple(example_spec.shape) == spec_shape
        assert example_spec.dtype == tf.float32 and label_spec.dtype == tf.float32
        assert tuple(label_spec.shape) == (output_dim,)
        examples, labels = read_all(data_dir / subset)
        assert len(examples) == count
        assert all(0.0 <= e.min() and e.max() <= 1.0 for e in examples)
        if subset == "test":
            assert not labels.any(), "test labels must be all zeros"
        else:
            assert (labels.sum(axis=1) >= 1).all()


def test_real_sample_metadata_methods():
    data_dir = shared_path("autodl_samples", "miniciao", "miniciao.data")
    metadata = AutoDLMetadata(data_dir / "train")
    assert metadata.is_compressed() and not metadata.is_sparse()
    assert metadata.get_bundle_size() == 1
    assert metadata.get_matrix_size() == (32, 32)
    assert metadata.get_num_channels() == 3
    assert metadata.get_tensor_size() == (32, 32, 3)
    assert metadata.get_sequence_size() == 1
    assert metadata.get_label_to_index_map()["cat"] == 3
    assert metadata.get_channel_to_index_map() == {}
    assert metadata.get_feature_to_index_map() == {}
    monkeys = AutoDLMetadata(AUTODL_SAMPLES / "Monkeys" / "Monkeys.data" / "train")
    assert monkeys.get_num_channels() == 3  # -1 on a compressed bundle means 3


def test_variable_size_jpeg_decodes_at_native_size():
    data_dir = shared_path("autodl_samples", "Monkeys", "Monkeys.data")
    examples, _ = read_all(data_dir / "train")
    sizes = {e.shape[1:3] for e in examples}
    assert len(sizes) > 1
    assert all(e.shape[0] == 1 and e.shape[3] == 3 for e in examples)


def test_array_round_trip_png_dense_and_video(tmp_path):
    rng = np.random.default_rng(1)
    cases = {
        "gray": rng.integers(0, 256, (12, 9, 7), dtype=np.uint8),
        "rgb": rng.integers(0, 256, (12, 6, 10, 3), dtype=np.uint8),
        "video": rng.integers(0, 256, (12, 4, 8, 8, 1), dtype=np.uint8),
        "dense": rng.random((12, 5, 4, 2)).astype(np.float32),
    }
    for name, x in cases.items():
        y = rng.integers(0, 4, len(x))
        root = write_arrays(name, tmp_path, x[:8], y[:8], x[8:], y[8:], output_dim=4)
        data_dir = root / f"{name}.data"
        expected = x.reshape(len(x), -1, *x.shape[-3:]) if x.ndim == 5 else (
            x.reshape(*x.shape, 1)[:, None] if x.ndim == 3 else x[:, None])
        scale = 255.0 if x.dtype == np.uint8 else 1.0
        # Test records come first and keep the order given; labels only in the solution.
        test_x, test_labels = read_all(data_dir / "test")
        train_x, train_labels = read_all(data_dir / "train")
        np.testing.assert_allclose(np.stack(test_x), expected[8:] / scale, atol=1e-6)
        np.testing.assert_allclose(np.stack(train_x), expected[:8] / scale, atol=1e-6)
        assert not test_labels.any()
        np.testing.assert_array_equal(train_labels.argmax(1), y[:8])
        solution = np.loadtxt(root / f"{name}.solution")
        np.testing.assert_array_equal(solution.argmax(1), y[8:])
        metadata = AutoDLMetadata(data_dir / "train")
        assert metadata.get_tensor_shape() == expected.shape[1:]
        assert metadata.is_compressed() == (x.dtype == np.uint8)


def test_record_ids_follow_the_platform_convention(tmp_path):
    x = np.zeros((7, 4, 4), dtype=np.uint8)
    root = write_arrays("ids", tmp_path, x[:4], np.arange(4) % 2, x[4:], np.arange(3) % 2)
    ids = {}
    for subset in ("test", "train"):
        path = next((root / "ids.data" / subset).glob("sample*"))
        ids[subset] = [tf.train.SequenceExample.FromString(r.numpy()).context.feature["id"]
                       .int64_list.value[0] for r in tf.data.TFRecordDataset(str(path))]
        for record in tf.data.TFRecordDataset(str(path)):
            context = tf.train.SequenceExample.FromString(record.numpy()).context.feature
            assert (len(context["label_index"].int64_list.value) == 0) == (subset == "test")
    assert ids == {"test": [0, 1, 2], "train": [3, 4, 5, 6]}


def make_image_folder(root: Path, rows: list[tuple[str, Image.Image, str, str | None]],
                      label_names: list[str] | None = None) -> Path:
    (root / "images").mkdir(parents=True)
    with (root / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["FileName", "Labels", "subset"])
        for filename, image, labels, subset in rows:
            if image is not None:
                image.save(root / "images" / filename)
            writer.writerow([filename, labels, subset or ""])
    if label_names:
        (root / "label.name").write_text("\n".join(label_names) + "\n")
    return root


def test_folder_conversion_mixed_channels_sizes_and_multilabel(tmp_path):
    rng = np.random.default_rng(2)
    pixels = [rng.integers(0, 256, (h, w, 4), dtype=np.uint8) for h, w in
              [(10, 12), (20, 8), (10, 12), (9, 9), (16, 16), (11, 5)]]
    images = [Image.fromarray(pixels[0][..., 0], "L"), Image.fromarray(pixels[1][..., :3]),
              Image.fromarray(pixels[2], "RGBA"), Image.fromarray(pixels[3][..., :3]),
              Image.fromarray(pixels[4][..., 0], "L").convert("P"),
              Image.fromarray(pixels[5][..., :3])]
    names = ["a.png", "b.jpg", "c.png", "d.bmp", "e.gif", "f.tiff"]
    labels = ["0", "1 2", "2", "0 1", "1", "2"]
    subsets = ["train", "train", "test", "train", "test", "train"]
    src = make_image_folder(tmp_path / "mixed", list(zip(names, images, labels, subsets)),
                            ["cat", "dog", "bird"])
    root = convert_folder(src, tmp_path / "out", progress=False)
    metadata = AutoDLMetadata(root / "mixed.data" / "train")
    assert metadata.get_tensor_shape() == (1, -1, -1, 3)
    assert metadata.get_label_to_index_map() == {"cat": 0, "dog": 1, "bird": 2}
    train_x, train_labels = read_all(root / "mixed.data" / "train")
    assert sorted(e.shape[1:3] for e in train_x) == sorted([(10, 12), (20, 8), (9, 9), (11, 5)])
    assert sorted(map(tuple, train_labels.astype(int))) == sorted(
        [(1, 0, 0), (0, 1, 1), (1, 1, 0), (0, 0, 1)])
    # Lossless formats keep their pixels exactly (the grayscale PNG comes back replicated).
    by_shape = {e.shape[1:3]: e[0] for e in train_x}
    np.testing.assert_allclose(by_shape[(10, 12)][..., 1], pixels[0][..., 0] / 255, atol=1e-6)
    np.testing.assert_allclose(by_shape[(9, 9)], pixels[3][..., :3] / 255, atol=1e-6)
    solution = np.loadtxt(root / "mixed.solution")
    assert solution.shape == (2, 3)


def test_video_folder_conversion_of_real_kth_clips(tmp_path):
    src = shared_path("raw_samples", "mini-kth")
    root = convert_folder(src, tmp_path, name="kth", num_frames=5, max_side=40, progress=False)
    metadata = AutoDLMetadata(root / "kth.data" / "train")
    assert metadata.get_tensor_shape() == (5, 30, 40, 1)
    examples, _ = read_all(root / "kth.data" / "train")
    assert all(e.shape == (5, 30, 40, 1) for e in examples)
    assert np.std(examples[0]) > 0.02  # real frames, not blank


def test_seeded_split_without_subset_column(tmp_path):
    image = Image.fromarray(np.zeros((4, 4), dtype=np.uint8))
    rows = [(f"{i}.png", image, str(i % 2), None) for i in range(40)]
    src = make_image_folder(tmp_path / "nosubset", rows)
    first = convert_folder(src, tmp_path / "a", progress=False)
    second = convert_folder(src, tmp_path / "b", progress=False)
    assert (first / "nosubset.solution").read_text() == (second / "nosubset.solution").read_text()
    n_test = AutoDLMetadata(first / "nosubset.data" / "test").size()
    assert 0 < n_test < 40


@pytest.mark.parametrize("problem", ["missing_file", "unreadable_image", "label_out_of_range"])
def test_bad_folder_input_names_the_file_and_keeps_existing_output(tmp_path, problem):
    image = Image.fromarray(np.zeros((4, 4), dtype=np.uint8))
    rows = [(f"{i}.png", image, str(i % 2), "train" if i < 6 else "test") for i in range(8)]
    src = make_image_folder(tmp_path / "bad", rows, ["zero", "one"])
    out = tmp_path / "out"
    good = convert_folder(src, out, progress=False)
    before = {p.name: p.read_bytes() for p in good.rglob("*") if p.is_file()}
    if problem == "missing_file":
        (src / "images" / "3.png").unlink()
        culprit = "3.png"
    elif problem == "unreadable_image":
        (src / "images" / "7.png").write_bytes(b"not an image")
        culprit = "7.png"
    else:
        lines = (src / "labels.csv").read_text().splitlines()
        lines[2] = "1.png,5,train"
        (src / "labels.csv").write_text("\n".join(lines) + "\n")
        culprit = "1.png"
    with pytest.raises(ConversionError, match=culprit):
        convert_folder(src, out, overwrite=True, progress=False)
    after = {p.name: p.read_bytes() for p in good.rglob("*") if p.is_file()}
    assert after == before, "the existing dataset must be left intact"
    assert [p.name for p in out.iterdir()] == ["bad"], "no partial output left behind"


def test_existing_dataset_is_not_replaced_without_overwrite(tmp_path):
    x = np.zeros((4, 4, 4), dtype=np.uint8)
    write_arrays("same", tmp_path, x[:2], [0, 1], x[2:], [0, 1])
    with pytest.raises(ConversionError, match="already exists"):
        write_arrays("same", tmp_path, x[:2], [0, 1], x[2:], [0, 1])


def test_corrupt_tfrecord_is_reported_with_its_file(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (30, 8, 8), dtype=np.uint8)
    root = write_arrays("corrupt", tmp_path, x[:20], np.arange(20) % 3, x[20:],
                        np.arange(10) % 3)
    record_file = next((root / "corrupt.data" / "train").glob("sample*"))
    data = bytearray(record_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    record_file.write_bytes(bytes(data))
    with pytest.raises(DatasetFormatError, match=record_file.name):
        AutoDLDataset(root / "corrupt.data" / "train").check_records()


def test_missing_or_doubled_data_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetFormatError, match="found 0"):
        find_data_dir(tmp_path)
    (tmp_path / "a.data").mkdir()
    (tmp_path / "b.data").mkdir()
    with pytest.raises(DatasetFormatError, match="a.data, b.data"):
        find_data_dir(tmp_path)
    with pytest.raises(DatasetFormatError, match="metadata.textproto"):
        AutoDLDataset(tmp_path / "a.data")


def test_several_record_files_are_all_read(tmp_path):
    x = np.random.default_rng(3).integers(0, 256, (40, 6, 6), dtype=np.uint8)
    root = write_arrays("shards", tmp_path, x[:30], np.arange(30) % 5, x[30:], np.arange(10) % 5)
    train_dir = root / "shards.data" / "train"
    record_file = next(train_dir.glob("sample*"))
    records = [r.numpy() for r in tf.data.TFRecordDataset(str(record_file))]
    record_file.unlink()
    for shard in range(3):
        with tf.io.TFRecordWriter(str(train_dir / f"sample-shard-{shard}.tfrecord")) as writer:
            for record in records[shard::3]:
                writer.write(record)
    (train_dir / "not-a-sample.tfrecord").write_bytes(b"ignored: the glob is sample*")
    dataset = AutoDLDataset(train_dir)
    assert len(dataset.get_files()) == 3
    assert dataset.check_records() == 30
    examples, labels = read_all(train_dir)
    assert len(examples) == 30
    assert sorted(labels.argmax(1).tolist()) == sorted((np.arange(30) % 5).tolist())


def test_sparse_bundle_is_read_as_the_platform_does(tmp_path):
    from ingestion_local import data_spec

    subset = tmp_path / "sparse"
    subset.mkdir()
    spec = data_spec.DataSpecification(sample_count=1, output_dim=2, sequence_size=1)
    spec.matrix_spec.add(row_count=1, col_count=10, num_channels=1, format=data_spec.SPARSE)
    (subset / "metadata.textproto").write_text(data_spec.format_data_spec(spec))

    def int_list(values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))

    example = tf.train.SequenceExample()
    example.context.feature["label_index"].int64_list.value.append(1)
    example.context.feature["label_score"].float_list.value.append(1.0)
    lists = example.feature_lists.feature_list
    lists["0_sparse_col_index"].feature.append(int_list([2, 7]))
    lists["0_sparse_row_index"].feature.append(int_list([0, 0]))
    lists["0_sparse_channel_index"].feature.append(int_list([0, 0]))
    lists["0_sparse_value"].feature.append(
        tf.train.Feature(float_list=tf.train.FloatList(value=[0.5, 2.0])))
    with tf.io.TFRecordWriter(str(subset / "sample-sparse.tfrecord")) as writer:
        writer.write(example.SerializeToString())
    (x, y), = list(AutoDLDataset(subset).get_dataset())
    np.testing.assert_allclose(x.numpy().reshape(-1, 2), [[2, 0.5], [7, 2.0]])
    np.testing.assert_array_equal(y.numpy(), [0, 1])


def test_convert_cli_help_and_error_exit(tmp_path, capsys):
    from ingestion_local.convert import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "labels.csv" in capsys.readouterr().out
    assert main([str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 2


def test_copy_of_real_sample_survives_our_reader_and_checks(tmp_path):
    source = shared_path("autodl_samples", "mini1")
    copy = tmp_path / "mini1"
    shutil.copytree(source, copy)
    for subset in ("train", "test"):
        assert AutoDLDataset(copy / "mini1.data" / subset).check_records() > 0
