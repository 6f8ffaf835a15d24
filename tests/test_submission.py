"""The submission (model.py over autodl_meta) through the local harness, and its fallbacks."""
from __future__ import annotations

import ast

import numpy as np
import pytest

from conftest import REPO_ROOT
from ingestion_local import AutoDLDataset
from ingestion_local.run_local_test import run_local_test


@pytest.mark.slow
def test_submission_learns_within_the_budget(small_image_dataset, tmp_path):
    budget = 40
    result = run_local_test(small_image_dataset, REPO_ROOT, budget, tmp_path, start_wait=120)
    assert result.ingestion_success
    timestamps = ast.literal_eval(result.read("scores.txt")["timestamps"])
    assert timestamps and max(timestamps) <= budget
    assert timestamps[0] < 15, "the first prediction must come early"
    assert result.alc > 0.6, f"ALC {result.alc}"


def test_failures_fall_back_to_the_last_good_prediction(small_image_dataset):
    from autodl_meta.learner import Learner

    data_dir = small_image_dataset / "smalldigits.data"
    train, test = AutoDLDataset(data_dir / "train"), AutoDLDataset(data_dir / "test")
    learner = Learner(train.get_metadata())
    for budget in (60, 50):  # the pixel model's prediction, then the frozen head's
        learner.train(train.get_dataset(), remaining_time_budget=budget)
        first = learner.test(test.get_dataset(), remaining_time_budget=budget - 5)
    assert learner.head_fitted
    assert first.shape == (100, 10) and np.isfinite(first).all()

    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure")

    learner.trainer.train_for = broken
    learner.trainer.predict = broken
    learner.predict_with = "network"
    learner.train(train.get_dataset(), remaining_time_budget=40)  # must not raise
    again = learner.test(test.get_dataset(), remaining_time_budget=35)
    np.testing.assert_array_equal(again, first)


def make_odd_dataset(kind: str, root):
    """Small real-format datasets of the awkward kinds the runtime must handle."""
    from conftest import shared_path
    from ingestion_local.convert import write_arrays

    rng = np.random.default_rng(0)
    if kind == "monkeys":  # 26 variable-size JPEGs, 3 classes in the test set
        return shared_path("autodl_samples", "Monkeys")
    n_train, n_test = 120, 40
    y = rng.integers(0, 3, n_train + n_test)
    if kind == "multilabel":
        x = rng.integers(0, 256, (n_train + n_test, 32, 32, 3), dtype=np.uint8)
        multi_hot = np.eye(3, dtype=int)[y]
        multi_hot[::3, (y[::3] + 1) % 3] = 1
        for i, labels in enumerate(multi_hot):  # make the labels learnable from the pixels
            x[i, :, :, :] //= 2
            x[i, :, :, np.flatnonzero(labels)] += 120
        return write_arrays(kind, root, x[:n_train], multi_hot[:n_train], x[n_train:],
                            multi_hot[n_train:])
    if kind == "four_channels":
        x = (rng.random((n_train + n_test, 32, 32, 4)) * 0.3 + y[:, None, None, None] * 0.3)
        return write_arrays(kind, root, x[:n_train].astype(np.float32), y[:n_train],
                            x[n_train:].astype(np.float32), y[n_train:])
    x = rng.integers(0, 60, (n_train + n_test, 6, 32, 32, 1), dtype=np.uint8)  # video
    x += (y * 80).astype(np.uint8)[:, None, None, None, None]
    return write_arrays(kind, root, x[:n_train], y[:n_train], x[n_train:], y[n_train:])


@pytest.mark.parametrize("kind", ["multilabel", "four_channels", "video", "monkeys"])
def test_awkward_inputs_get_predictions(kind, tmp_path):
    from autodl_meta.learner import Learner

    root = make_odd_dataset(kind, tmp_path)
    data_dir = next(root.glob("*.data"))
    train, test = AutoDLDataset(data_dir / "train"), AutoDLDataset(data_dir / "test")
    solution = np.loadtxt(next(root.glob("*.solution")))
    learner = Learner(train.get_metadata())
    predictions = []
    for budget in (60, 50, 40):
        learner.train(train.get_dataset(), remaining_time_budget=budget)
        predictions.append(learner.test(test.get_dataset(), remaining_time_budget=budget - 5))
    for prediction in predictions:
        assert prediction.shape == solution.shape
        assert np.isfinite(prediction).all()
    assert learner.trainer.multilabel == (kind == "multilabel")
    if kind != "monkeys":  # the synthetic ones are separable: the head must find it
        from autodl_meta.validation import nauc

        assert nauc(solution, predictions[1]) > 0.5  # the frozen-feature head
