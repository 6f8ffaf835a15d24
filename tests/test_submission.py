"""The submission (model.py over autodl_meta) through the local harness, and its fallbacks."""
from __future__ import annotations

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
    timestamps = eval(result.read("scores.txt")["timestamps"])
    assert timestamps and max(timestamps) <= budget
    assert timestamps[0] < 15, "the first prediction must come early"
    assert result.alc > 0.6, f"ALC {result.alc}"


def test_failures_fall_back_to_the_last_good_prediction(small_image_dataset):
    from autodl_meta.learner import Learner

    data_dir = small_image_dataset / "smalldigits.data"
    train, test = AutoDLDataset(data_dir / "train"), AutoDLDataset(data_dir / "test")
    learner = Learner(train.get_metadata())
    learner.train(train.get_dataset(), remaining_time_budget=60)
    first = learner.test(test.get_dataset(), remaining_time_budget=55)
    assert first.shape == (100, 10) and np.isfinite(first).all()

    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure")

    learner.trainer.train_for = broken
    learner.trainer.predict = broken
    learner.predict_with = "network"
    learner.train(train.get_dataset(), remaining_time_budget=50)  # must not raise
    again = learner.test(test.get_dataset(), remaining_time_budget=45)
    np.testing.assert_array_equal(again, first)
