"""The runtime's reader: its own decode of AutoDL records against the platform's parse."""
from __future__ import annotations

import numpy as np
import pytest

from ingestion_local import AutoDLDataset


def _subset(root, subset: str = "train") -> AutoDLDataset:
    return AutoDLDataset(next(root.glob("*.data")) / subset)


def _both_decodes(subset: AutoDLDataset, resolution: int, frames: int = 1):
    from autodl_meta.data import RecordReader

    direct = RecordReader(subset.get_dataset(), resolution, frames)
    platform = RecordReader(subset.get_dataset(), resolution, frames, direct=False)
    return direct, direct.decode(), platform.decode()


def _write(kind: str, root):
    from ingestion_local.convert import write_arrays

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 60)
    shapes = {"gray_28": (60, 28, 28), "rgb_40": (60, 40, 40, 3), "rgb_24": (60, 24, 24, 3),
              "video": (60, 7, 20, 20, 1)}
    x = rng.integers(0, 256, shapes[kind], dtype=np.uint8)
    return write_arrays(kind, root, x[:40], y[:40], x[40:], y[40:])


@pytest.mark.parametrize("kind, resolution, frames", [
    ("gray_28", 32, 1),   # upscaled a batch at a time
    ("rgb_40", 32, 1),    # downscaled
    ("rgb_24", 24, 1),    # kept as stored
    ("video", 16, 3),     # 3 of 7 frames
])
def test_the_direct_decode_gives_the_platform_pixels_and_labels(kind, resolution, frames,
                                                                tmp_path):
    reader, direct, platform = _both_decodes(_subset(_write(kind, tmp_path)), resolution,
                                             frames)
    assert reader.direct
    assert direct.images.shape == platform.images.shape
    assert direct.images.shape[1:] == (frames, platform.images.shape[2], resolution, resolution)
    np.testing.assert_array_equal(direct.positions, platform.positions)
    np.testing.assert_array_equal(direct.labels, platform.labels)
    difference = np.abs(direct.images.astype(int) - platform.images.astype(int))
    assert difference.max() <= 1 and difference.mean() < 0.05


@pytest.mark.parametrize("name, direct", [
    ("miniciao", True),   # the platform's own records: 32 x 32 colour JPEGs
    ("Monkeys", True),    # variable-size JPEGs
    ("mini1", False),     # dense floats: no compressed frames to decode
])
@pytest.mark.parametrize("subset", ["train", "test"])   # test: the platform erased the labels
def test_real_platform_records_decode_as_the_platform_does(name, direct, subset):
    from conftest import shared_path

    records = AutoDLDataset(shared_path("autodl_samples", name, f"{name}.data", subset))
    reader, decoded, platform = _both_decodes(records, 48)
    assert reader.direct == direct
    if name == "Monkeys":
        assert reader.stored_size is None
    np.testing.assert_array_equal(decoded.positions, platform.positions)
    np.testing.assert_array_equal(decoded.labels, platform.labels)
    difference = np.abs(decoded.images.astype(int) - platform.images.astype(int))
    assert difference.max() <= 1


def test_dense_records_keep_the_platform_parse(tmp_path):
    from ingestion_local.convert import write_arrays

    rng = np.random.default_rng(0)
    x = rng.random((30, 16, 16, 4)).astype(np.float32)
    y = rng.integers(0, 3, 30)
    reader, direct, platform = _both_decodes(
        _subset(write_arrays("dense4", tmp_path, x[:20], y[:20], x[20:], y[20:])), 16)
    assert not reader.direct
    np.testing.assert_array_equal(direct.images, platform.images)


def test_undecodable_records_are_reported_by_either_decode(tmp_path):
    from ingestion_local.variants import corrupt_variant, derive

    from conftest import write_digits

    corrupt = derive(write_digits(tmp_path, count=300), tmp_path, corrupt_variant(0.1))
    subset = _subset(corrupt)
    reader, direct, platform = _both_decodes(subset, 16)
    assert reader.direct
    assert len(direct.positions) == len(platform.positions) == 240 - 24
    np.testing.assert_array_equal(direct.positions, platform.positions)
    wanted = np.arange(0, 240, 3)
    picked = reader.decode_pass(wanted).read()
    assert set(picked.positions) | set(picked.failed) == set(wanted)
    assert set(picked.failed) == set(wanted) - set(platform.positions)


def test_a_test_set_that_trusts_a_wrong_check_loses_no_row():
    """Told to decode directly records it cannot (dense floats), the test set gets every row
    through the platform's parse."""
    from autodl_meta.pool import TestSet
    from conftest import shared_path

    records = AutoDLDataset(shared_path("autodl_samples", "mini1", "mini1.data", "test"))
    test_set = TestSet.decode(records.get_dataset(), 32, 1, direct=True)
    expected = TestSet.decode(records.get_dataset(), 32, 1, direct=False)
    assert test_set.count == 10 and not len(test_set.failed)
    np.testing.assert_array_equal(test_set.rows, np.arange(10))
    np.testing.assert_array_equal(test_set.images.numpy(), expected.images.numpy())
