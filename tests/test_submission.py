"""The submission (model.py over autodl_meta) through the local harness, and its fallbacks."""
from __future__ import annotations

import ast
import time

import numpy as np
import pytest

from conftest import REPO_ROOT
from ingestion_local import AutoDLDataset
from autodl_meta.validation import nauc
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


def run_calls(learner, train, test, budgets):
    predictions = []
    for budget in budgets:
        learner.train(train.get_dataset(), remaining_time_budget=budget)
        predictions.append(learner.test(test.get_dataset(), remaining_time_budget=budget - 1))
    return predictions


def test_failures_fall_back_to_the_last_good_prediction(small_image_dataset):
    from autodl_meta.learner import Learner, Phase

    data_dir = small_image_dataset / "smalldigits.data"
    train, test = AutoDLDataset(data_dir / "train"), AutoDLDataset(data_dir / "test")
    learner = Learner(train.get_metadata())
    first = run_calls(learner, train, test, (60, 50))[-1]  # pixel model, then frozen head
    assert learner.phase is Phase.FINE_TUNE
    assert first.shape == (100, 10) and np.isfinite(first).all()

    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure")

    learner.trainer.train_for = broken
    learner.trainer.predict = broken
    again = run_calls(learner, train, test, (40, 35))  # must not raise
    for prediction in again:
        np.testing.assert_array_equal(prediction, first)
    # The failing phase was tried twice, then given up: the run says it is done.
    assert learner.done_training
    assert learner.record.stages["fine_tune"].status == "failed"
    errors = learner.errors.to_list()
    assert len(errors) == 1 and errors[0]["count"] == 2  # one error, counted, logged once


def test_a_run_whose_every_phase_fails_stops_within_a_few_calls(small_image_dataset,
                                                               monkeypatch):
    from autodl_meta import learner as learner_module

    def broken(*args, **kwargs):
        raise RuntimeError("no backbone today")

    data_dir = small_image_dataset / "smalldigits.data"
    train, test = AutoDLDataset(data_dir / "train"), AutoDLDataset(data_dir / "test")
    monkeypatch.setattr(learner_module.PixelStage, "fit", broken)
    monkeypatch.setattr(learner_module, "Trainer", broken)
    model = learner_module.Learner(train.get_metadata())
    began = time.monotonic()
    calls = 0
    while not model.done_training and calls < 50:
        prediction = model.test(test.get_dataset()) if calls % 2 else None
        if not calls % 2:
            model.train(train.get_dataset(), remaining_time_budget=60)
        calls += 1
    assert model.done_training and calls <= 10, calls
    assert time.monotonic() - began < 30
    prediction = model.test(test.get_dataset())
    assert prediction.shape == (100, 10)  # the class prior, one row per test record
    np.testing.assert_allclose(prediction[0], prediction[-1])


def test_a_class_sorted_dataset_gets_a_first_model_that_saw_every_class(tmp_path):
    from autodl_meta.learner import Learner
    from ingestion_local.variants import class_order_variant, derive

    from conftest import write_digits

    source = write_digits(tmp_path, count=600)
    sorted_dir = derive(source, tmp_path, class_order_variant())
    data_dir = next(sorted_dir.glob("*.data"))
    train, test = AutoDLDataset(data_dir / "train"), AutoDLDataset(data_dir / "test")
    labels = np.stack([y.numpy() for _, y in train.get_dataset()])
    assert (np.diff(labels.argmax(1)) >= 0).all()  # really sorted
    solution = np.loadtxt(next(sorted_dir.glob("*.solution")))
    learner = Learner(train.get_metadata())
    first = run_calls(learner, train, test, (60,))[0]
    pool = learner.data.pool
    assert set(pool.labels[pool.fit_rows()].argmax(1).tolist()) == set(range(10))
    assert set(pool.labels[pool.validation_rows()].argmax(1).tolist()) == set(range(10))
    assert nauc(solution, first) > 0.8
    assert learner.record.dataset["first_read"]["classes"] == 10


def test_the_first_call_reads_one_chunk_and_the_head_call_the_rest_of_a_cheap_read(
        tmp_path, monkeypatch):
    from autodl_meta import learner as learner_module
    from autodl_meta import pool as pool_module
    from autodl_meta.learner import Learner

    from conftest import write_digits

    # 1,437 training records: read in chunks as a large set would be, not whole. What follows a
    # cheap read is tested, not this machine's speed: a loaded one decodes these 8 x 8 PNGs
    # slower than the runtime's threshold.
    monkeypatch.setattr(pool_module, "SMALL_DATASET", 100)
    monkeypatch.setattr(learner_module, "EXTRA_READ_COUNT", 600)
    monkeypatch.setattr(learner_module, "CHEAP_READ_SECONDS", 60.0)
    data_dir = next(write_digits(tmp_path, count=1797).glob("*.data"))
    train, test = AutoDLDataset(data_dir / "train"), AutoDLDataset(data_dir / "test")
    learner = Learner(train.get_metadata())
    run_calls(learner, train, test, (60,))
    first_chunk = len(learner.data.pool)
    assert first_chunk == len(learner.plan.validation) + pool_module.FIRST_CHUNK
    assert learner.cheap_decoding  # 8 x 8 PNGs
    first_pixel = learner.pixel.model
    run_calls(learner, train, test, (55,))
    assert learner.phase is learner_module.Phase.FINE_TUNE
    assert len(learner.data.pool) >= first_chunk + 600
    assert learner.pixel.model is not first_pixel  # fitted again on the larger pool


def test_a_tiny_dataset_without_validation_rows_still_gets_a_network(tmp_path):
    from autodl_meta.learner import Learner

    from conftest import write_digits

    # 40 training records: too few to hold any out for validation.
    data_dir = next(write_digits(tmp_path, count=50).glob("*.data"))
    train, test = AutoDLDataset(data_dir / "train"), AutoDLDataset(data_dir / "test")
    learner = Learner(train.get_metadata())
    predictions = run_calls(learner, train, test, (60, 55, 50, 45))
    assert not len(learner.data.pool.validation_rows())
    assert learner.record.stage("head").status == "done"
    assert learner.record.stage("fine_tune").failures == 0
    assert all(p.shape == (10, 10) and np.isfinite(p).all() for p in predictions)
    assert not learner.errors.counts


def test_undecodable_records_are_skipped_and_test_rows_kept(tmp_path):
    from autodl_meta.learner import Learner
    from autodl_meta.record import read_run_record
    from ingestion_local.variants import corrupt_variant, derive

    from conftest import write_digits

    source = write_digits(tmp_path, count=400)
    corrupt = derive(source, tmp_path, corrupt_variant(0.05))
    data_dir = next(corrupt.glob("*.data"))
    train, test = AutoDLDataset(data_dir / "train"), AutoDLDataset(data_dir / "test")
    solution = np.loadtxt(next(corrupt.glob("*.solution")))
    record = tmp_path / "record.json"
    import os
    os.environ["AUTODL_RUN_RECORD"] = str(record)
    try:
        learner = Learner(train.get_metadata())
        predictions = run_calls(learner, train, test, (60, 50))
    finally:
        del os.environ["AUTODL_RUN_RECORD"]
    for prediction in predictions:
        assert prediction.shape == solution.shape and np.isfinite(prediction).all()
    assert nauc(solution, predictions[-1]) > 0.6
    written = read_run_record(record)
    assert written["undecodable"] == {"train": round(0.05 * 320), "test": round(0.05 * 80)}
    assert not written["errors"]


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
    if kind != "monkeys":  # the synthetic ones are separable: every model must find it
        assert nauc(solution, predictions[1]) > 0.5


def test_a_weak_first_model_does_not_hold_the_run(small_image_dataset, tmp_path, monkeypatch):
    """A first model that ranks at random must give way to the later, better ones."""
    from autodl_meta import learner as learner_module
    from ingestion_local.variants import class_order_variant, derive

    fit = learner_module.PixelStage.fit

    def weak_fit(self, pool):
        candidate = fit(self, pool)
        rng = np.random.default_rng(0)
        candidate.validation_scores = rng.random(candidate.validation_scores.shape)
        candidate.score_test = lambda test: rng.random((len(test.images),
                                                        candidate.validation_scores.shape[1]))
        return candidate

    monkeypatch.setattr(learner_module.PixelStage, "fit", weak_fit)
    sorted_dir = derive(small_image_dataset, tmp_path, class_order_variant())
    data_dir = next(sorted_dir.glob("*.data"))
    train, test = AutoDLDataset(data_dir / "train"), AutoDLDataset(data_dir / "test")
    solution = np.loadtxt(next(sorted_dir.glob("*.solution")))
    learner = learner_module.Learner(train.get_metadata())
    predictions = run_calls(learner, train, test, (120, 110, 100, 90))
    scores = [nauc(solution, p) for p in predictions]
    assert "pixel" not in learner.blend.described() or len(learner.blend.described()) > 1
    assert scores[-1] > scores[0] + 0.3, scores


@pytest.mark.slow
def test_corrupt_records_through_the_harness(tmp_path):
    from ingestion_local.variants import corrupt_variant, derive

    from conftest import write_digits

    corrupt = derive(write_digits(tmp_path, count=500), tmp_path, corrupt_variant(0.05))
    budget = 30
    result = run_local_test(corrupt, REPO_ROOT, budget, tmp_path / "run", start_wait=120)
    assert result.ingestion_success
    timestamps = ast.literal_eval(result.read("scores.txt")["timestamps"])
    assert 1 <= len(timestamps) <= 100 and max(timestamps) <= budget
    assert result.alc > 0.5, result.alc
    from autodl_meta.record import read_run_record

    record = read_run_record(result.prediction_dir / "run_record.json")
    assert record["undecodable"] == {"train": 20, "test": 5}


def test_a_dataset_not_built_by_the_platform_is_streamed(small_image_dataset):
    """Any tf.data dataset of (example, labels) works, read in record order."""
    from autodl_meta.learner import Learner

    data_dir = small_image_dataset / "smalldigits.data"
    train, test = AutoDLDataset(data_dir / "train"), AutoDLDataset(data_dir / "test")
    solution = np.loadtxt(small_image_dataset / "smalldigits.solution")

    class Wrapped:  # the platform's datasets behind a prefetch: no record file to find
        def __init__(self, subset):
            self.subset = subset

        def get_dataset(self):
            return self.subset.get_dataset().prefetch(1)

    learner = Learner(train.get_metadata())
    predictions = run_calls(learner, Wrapped(train), Wrapped(test), (60, 50))
    assert learner.record.dataset["reader"] == "stream"
    assert all(p.shape == solution.shape for p in predictions)
    assert nauc(solution, predictions[-1]) > 0.6
