"""Unit tests of the runtime's small parts: config schema, time policy, quick model."""
from __future__ import annotations

import json
import math
from collections import deque
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from autodl_meta.config import GENERALIST, ConfigError, TrainConfig
from autodl_meta.learner import RECENT_PREDICTIONS, Learner, effective_resolution
from autodl_meta.policy import TimePolicy
from autodl_meta.quick import PixelLogistic
from autodl_meta.trainer import TIMED_FEATURE_BATCH, Trainer
from autodl_meta.validation import complement, nauc, split_validation


def test_config_round_trip_and_file_errors_name_file_and_field(tmp_path):
    assert TrainConfig.from_dict(GENERALIST.to_dict()) == GENERALIST
    path = tmp_path / "cifar10.json"
    path.write_text(json.dumps({**GENERALIST.to_dict(), "batch_size": 48}))
    with pytest.raises(ConfigError, match=r"cifar10.json: field 'batch_size'"):
        TrainConfig.load(path)
    path.write_text(json.dumps({"learning_rate": "fast"}))
    with pytest.raises(ConfigError, match=r"cifar10.json: field 'learning_rate' must be float"):
        TrainConfig.load(path)
    path.write_text(json.dumps({"momentum": 0.5}))
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['momentum'\]"):
        TrainConfig.load(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        TrainConfig.load(path)
    assert TrainConfig.from_dict({"learning_rate": 1}).learning_rate == 1.0


@pytest.mark.parametrize("field,value", [("resolution", 40), ("resolution", 16),
                                         ("optimizer", "rmsprop"), ("dropout", 1.0),
                                         ("augmentation", "autoaugment")])
def test_config_rejects_values_outside_the_search_space(field, value):
    with pytest.raises(ConfigError, match=field):
        TrainConfig.from_dict({field: value})


def test_policy_spreads_predictions_evenly_in_log_time():
    policy = TimePolicy(time_budget=1200, step=0.1)
    policy.started -= 60  # pretend one minute has passed
    slice_seconds = policy.next_slice(test_seconds=0)
    x_now, x_next = policy.transformed(60), policy.transformed(60 + slice_seconds)
    assert x_next - x_now == pytest.approx(0.1, abs=0.01)
    assert policy.time_at(policy.transformed(300)) == pytest.approx(300)
    assert policy.min_slice_seconds == pytest.approx(24)


def test_policy_never_plans_past_the_budget():
    policy = TimePolicy(time_budget=100)
    policy.started -= 90
    assert policy.next_slice(test_seconds=4) <= 100 - 90 - 4 - policy.safety_seconds
    assert not policy.can_afford(test_seconds=4)


def test_pixel_logistic_separates_real_digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(np.round(digits.images * 255 / 16).astype(np.uint8))
    images = torch.nn.functional.interpolate(images[:, None].float(), size=32).byte()[:, None]
    labels = torch.eye(10)[digits.target]
    model = PixelLogistic().fit(images[:1200], labels[:1200])
    scores = model.predict(images[1200:])
    assert nauc(labels[1200:].numpy(), scores) > 0.9


def test_effective_resolution_keeps_small_images_small():
    def meta(row, col):
        return SimpleNamespace(get_matrix_size=lambda: (row, col))

    assert effective_resolution(meta(28, 28), 64) == 32
    assert effective_resolution(meta(40, 30), 64) == 48
    assert effective_resolution(meta(500, 300), 64) == 64
    assert effective_resolution(meta(-1, -1), 96) == 96


def test_validation_split_and_nauc():
    assert len(split_validation(30)) == 0
    held = split_validation(1000)
    assert len(held) == 100 and len(set(held.tolist())) == 100
    rest = complement(held, 1200)
    assert len(rest) == 1100 and not set(rest.tolist()) & set(held.tolist())
    labels = np.eye(3)[[0, 1, 2, 0]]
    labels[:, 2] = 0  # a class absent from the split is ignored, as the scorer does
    assert nauc(labels, labels) == pytest.approx(1.0)
    assert math.isclose(nauc(np.zeros((3, 2)), np.ones((3, 2))), 0.0)


def test_recent_network_predictions_are_averaged_only_when_validation_gains():
    rng = np.random.default_rng(0)
    truth = np.eye(2)[rng.integers(0, 2, 200)]
    learner = object.__new__(Learner)  # only the averaging state is needed
    learner.train_reader = SimpleNamespace(labels=torch.tensor(truth))
    learner.validation = torch.arange(200)
    learner.recent = deque(maxlen=RECENT_PREDICTIONS)

    def state(noise_seed: int) -> np.ndarray:
        return truth + np.random.default_rng(noise_seed).normal(0, 1.5, truth.shape)

    # Independent noise: the average of two states ranks better than either.
    first, second = state(1), state(2)
    learner.accepted_validation = first
    assert np.array_equal(learner._average_recent(first * 10), first * 10)
    learner.accepted_validation = second
    averaged = learner._average_recent(second * 10)
    assert np.allclose(averaged, (first + second) * 5)
    # A clearly better latest state is returned alone.
    learner.accepted_validation = truth
    assert np.array_equal(learner._average_recent(truth * 10), truth * 10)


def test_a_timed_feature_pass_embeds_a_prefix_and_an_untimed_one_everything():
    trainer = Trainer(TrainConfig(resolution=32), num_classes=3, in_channels=3,
                      multilabel=False, device=torch.device("cpu"))
    images = torch.randint(0, 256, (3 * TIMED_FEATURE_BATCH, 1, 3, 32, 32), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    everything = trainer.features(images)
    # No time at all still embeds one batch, the first: the head always has examples.
    prefix = trainer.features(images, seconds=0.0)
    assert len(everything) == len(images) and len(prefix) == TIMED_FEATURE_BATCH
    assert torch.allclose(prefix, everything[:TIMED_FEATURE_BATCH], atol=1e-5)
    assert len(trainer.features(images, seconds=600.0)) == len(images)


@pytest.mark.parametrize("head_is_better", [True, False])
def test_the_head_replaces_the_pixel_prediction_only_when_validation_says_it_is_better(
        head_is_better):
    truth = torch.eye(2)[torch.arange(200) % 2]
    features = torch.randn(200, 4)

    class StubTrainer:  # a head whose validation scores are the truth, or their reverse
        def features(self, images, seconds=None):
            return features[:len(images)]

        def fit_head(self, features, labels):
            pass

        def predict_from_features(self, rows):
            chosen = truth[:len(rows)] if head_is_better else 1 - truth[:len(rows)]
            return chosen.numpy()

    learner = object.__new__(Learner)  # only the head stage's state is needed
    learner.train_reader = SimpleNamespace(images=torch.zeros(200, 1, 1, 8, 8), labels=truth)
    learner.validation = torch.arange(100)  # the stub scores validation rows by index
    learner.trainer, learner.frames, learner.policy = StubTrainer(), 1, TimePolicy(100.0)
    learner.config, learner.use_gnn = GENERALIST, False
    learner.test_reader, learner.test_seconds = SimpleNamespace(count=1000), 0.0
    # The pixel model ranks at random (validation NAUC near 0), between the two heads.
    pixel_scores = torch.rand(200, 2, generator=torch.Generator().manual_seed(0)).numpy()
    learner.quick = SimpleNamespace(predict=lambda images: pixel_scores[:len(images)])
    learner.best_validation, learner.predict_with = 0.1, "quick"
    learner._fit_head()
    assert learner.head_fitted
    if head_is_better:
        assert learner.predict_with == "head" and learner.best_validation == 1.0
    else:
        assert learner.predict_with == "quick" and learner.best_validation == 0.1
        assert learner.test_seconds > 0  # a network prediction's time is estimated instead
