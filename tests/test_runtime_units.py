"""Unit tests of the runtime's small parts: config schema, time policy, validation, stages."""
from __future__ import annotations

import json
import math
import platform
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from autodl_meta.config import GENERALIST, ConfigError, TrainConfig
from autodl_meta.learner import effective_resolution
from autodl_meta.policy import TimePolicy
from autodl_meta.quick import PixelLogistic
from autodl_meta.stages import Blend, Candidate, HeadStage, PixelStage
from autodl_meta.trainer import TIMED_FEATURE_BATCH, Trainer, keep_freed_memory
from autodl_meta.validation import beats, choose_validation, nauc, stratified_order


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
                                         ("augmentation", "autoaugment"),
                                         ("frozen_fraction", 1.5), ("frozen_fraction", -0.1)])
def test_config_rejects_values_outside_the_search_space(field, value):
    with pytest.raises(ConfigError, match=field):
        TrainConfig.from_dict({field: value})


def test_an_embedding_loss_needs_some_backbone_to_train():
    with pytest.raises(ConfigError, match="frozen_fraction.*supcon"):
        TrainConfig(embedding_loss="supcon", frozen_fraction=1.0)
    assert TrainConfig(embedding_loss="supcon", frozen_fraction=0.5).frozen_fraction == 0.5


def test_policy_spreads_predictions_evenly_in_log_time():
    policy = TimePolicy(time_budget=1200, growth=1.2)
    policy.started -= 60  # pretend one minute has passed
    slice_seconds = policy.next_slice(test_seconds=0)
    assert (1 + (60 + slice_seconds) / 60) / (1 + 60 / 60) == pytest.approx(1.2, rel=0.01)
    assert policy.transformed(1200) == pytest.approx(1.0)


def test_policy_sizes_slices_the_same_whatever_the_budget():
    """Anytime: before the end, a 60-s and a 1,200-s run train for the same slices."""
    short, long = TimePolicy(time_budget=60), TimePolicy(time_budget=1200)
    for elapsed in (2.0, 10.0, 30.0):
        short.started = long.started = time.monotonic() - elapsed
        assert short.next_slice(1.0) == pytest.approx(long.next_slice(1.0), abs=0.01)
        assert short.can_afford(1.0) and long.can_afford(1.0)
    short.started = long.started = time.monotonic() - 50
    assert short.next_slice(1.0) < long.next_slice(1.0)  # stopping: 60 s leave 10
    assert not short.can_afford(3.0)


def test_policy_never_plans_past_the_budget():
    policy = TimePolicy(time_budget=100)
    policy.started -= 90
    assert policy.next_slice(test_seconds=4) <= 100 - 90 - 4 - policy.safety_seconds
    assert not policy.can_afford(test_seconds=4)


def test_the_allocator_keeps_freed_memory_where_glibc_allows_it():
    """On glibc both mallopt settings take; elsewhere the call changes nothing and says so."""
    assert keep_freed_memory() is (platform.libc_ver()[0] == "glibc")


def test_a_trainer_counts_the_images_of_its_eval_passes():
    """What a priced clock charges (offline/evaluate.py): every image, flips counted."""
    trainer = Trainer(TrainConfig(resolution=32, batch_size=16, flip_tta=True), num_classes=3,
                      in_channels=1, multilabel=False, device=torch.device("cpu"))
    images = torch.randint(0, 256, (10, 2, 1, 32, 32), dtype=torch.uint8)  # 10 clips, 2 frames
    trainer.features(images)
    assert trainer.forward_images == 20 and trainer.forward_seconds > 0
    trainer.predict(images)
    assert trainer.forward_images == 20 + 2 * 20


def test_a_trainer_counts_its_steps_by_the_size_of_their_batch():
    """A pool smaller than the configured batch makes smaller (cheaper) steps: a priced clock
    charges them at their own size (offline/evaluate.py)."""
    trainer = Trainer(TrainConfig(resolution=32, batch_size=16), num_classes=3, in_channels=1,
                      multilabel=False, device=torch.device("cpu"))
    images = torch.randint(0, 256, (30, 1, 1, 32, 32), dtype=torch.uint8)
    labels = torch.eye(3)[torch.arange(30) % 3]
    trainer.train_for(images, labels, seconds=0.0, indices=torch.arange(5))
    trainer.train_for(images, labels, seconds=0.0)
    assert trainer.steps_by_batch_size == {5: 1, 16: 1} and trainer.steps == 2


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


def test_nauc_is_undefined_without_both_classes_and_undefined_never_wins():
    labels = np.eye(3)[[0, 1, 2, 0]]
    labels[:, 2] = 0  # a class absent from the split is ignored, as the scorer does
    assert nauc(labels, labels) == pytest.approx(1.0)
    assert math.isnan(nauc(np.zeros((3, 2)), np.ones((3, 2))))
    assert math.isnan(nauc(np.eye(2)[[0, 0, 0]], np.random.rand(3, 2)))
    assert math.isnan(nauc(np.zeros((0, 2)), np.zeros((0, 2))))
    assert beats(0.1, math.nan) and not beats(math.nan, 0.1) and not beats(math.nan, math.nan)
    assert not beats(0.5, 0.5) and beats(0.6, 0.5)


def test_validation_is_stratified_whatever_the_record_order():
    classes = np.repeat(np.arange(10), 100)  # sorted by class, as a class-folder dataset
    held = choose_validation(classes, np.random.default_rng(0))
    assert len(held) == 100 and len(set(held.tolist())) == 100
    assert np.bincount(classes[held], minlength=10).tolist() == [10] * 10
    # A class with one example stays in training; tiny sets hold nothing out.
    classes = np.concatenate([np.repeat(np.arange(5), 30), [5]])
    held = choose_validation(classes, np.random.default_rng(0))
    assert 5 not in classes[held]
    assert len(choose_validation(np.arange(30) % 3, np.random.default_rng(0))) == 0


def test_stratified_order_covers_every_class_first():
    classes = np.repeat(np.arange(43), 50)
    order = stratified_order(classes, np.random.default_rng(0))
    assert sorted(order.tolist()) == list(range(len(classes)))
    assert set(classes[order[:43]].tolist()) == set(range(43))  # one of each, first


def test_near_copies_of_validation_rows_leave_training_unless_the_class_is_dense():
    from autodl_meta.data import Decoded
    from autodl_meta.pool import TrainingPool

    rng = np.random.default_rng(0)
    sources = rng.integers(0, 256, (60, 1, 3, 32, 32), dtype=np.uint8)  # distinct images
    copies = np.clip(sources.astype(int) + rng.integers(-4, 5, sources.shape), 0, 255)
    images = np.concatenate([sources, copies.astype(np.uint8)])
    labels = np.eye(6, dtype=np.float32)[np.arange(120) % 6]
    pool = TrainingPool(validation_positions=np.arange(10))  # sources 0-9 validate
    pool.add(Decoded(images[:70], labels[:70], np.arange(70), np.zeros(0, np.int64)))
    pool.add(Decoded(images[70:], labels[70:], np.arange(70, 120), np.zeros(0, np.int64)))
    # Rows 60-69 copy the validation sources: out of training, however late they came.
    assert pool.excluded.nonzero().squeeze(1).tolist() == list(range(60, 70))
    assert set(pool.fit_rows().tolist()) == set(range(10, 60)) | set(range(70, 120))
    # One image repeated in many rows is a dense class, not a small group: all stay.
    dense = TrainingPool(validation_positions=np.arange(2))
    same = np.repeat(images[:1], 40, axis=0)
    dense.add(Decoded(np.concatenate([same, images[60:80]]), labels[:60], np.arange(60),
                      np.zeros(0, np.int64)))
    assert not dense.excluded.any()


def test_a_blend_takes_a_model_only_when_validation_rises():
    rng = np.random.default_rng(0)
    truth = np.eye(2)[rng.integers(0, 2, 200)]

    def candidate(name, scores):
        return Candidate(name, scores, 1, lambda test: scores[:5])

    def noisy(seed, noise=1.5):
        return truth + np.random.default_rng(seed).normal(0, noise, truth.shape)

    blend = Blend()
    assert blend.consider(candidate("pixel", noisy(1)), truth)
    assert blend.described() == {"pixel": 1.0}
    # Worse on its own, and no help in the average: nothing changes, no new prediction.
    version = blend.version
    assert not blend.consider(candidate("head", 1 - truth), truth)
    assert blend.version == version
    # Independent noise: the average of two models ranks better than either.
    assert blend.consider(candidate("network@10", noisy(2)), truth)
    assert set(blend.described()) == {"pixel", "network@10"}
    # A clearly better model takes the prediction alone.
    assert blend.consider(candidate("network@20", truth), truth)
    assert blend.described() == {"network@20": 1.0} and blend.score == pytest.approx(1.0)


def test_without_a_defined_validation_score_the_newest_model_predicts():
    truth = np.eye(2)[[0, 0, 0, 0]]  # one class only: every score is undefined
    blend = Blend()
    for name in ("pixel", "head"):
        assert blend.consider(Candidate(name, np.random.rand(4, 2), 1, None), truth)
        assert blend.described() == {name: 1.0} and math.isnan(blend.score)
    # Once a defined score exists, an undefined one cannot take over.
    defined = np.eye(2)[[0, 1, 0, 1]]
    assert blend.consider(Candidate("network@1", defined, 1, None), defined)
    assert not blend.consider(Candidate("network@2", np.random.rand(4, 2), 1, None), truth)


def test_the_head_stage_fits_on_frozen_features_and_scores_validation():
    truth = torch.eye(2)[torch.arange(200) % 2]
    features = torch.randn(200, 4) + 3 * truth[:, :1]  # separable along the first feature

    class StubTrainer:  # frozen features indexed by the images' first pixel
        clock = staticmethod(time.monotonic)

        def features(self, images, seconds=None):
            return features[images[:, 0, 0, 0, 0].long()]

        def fit_head(self, rows, labels):
            self.direction = (rows[labels[:, 0] == 1].mean(0) - rows[labels[:, 0] == 0].mean(0))

        def predict_from_features(self, rows):
            score = rows @ self.direction
            return torch.stack([score, -score], 1).numpy()

    images = torch.zeros(200, 1, 1, 8, 8, dtype=torch.uint8)
    images[:, 0, 0, 0, 0] = torch.arange(200).byte()
    pool = SimpleNamespace(images=images, labels=truth, validation_version=1,
                           validation_rows=lambda: torch.arange(150, 200),
                           fit_rows=lambda: torch.arange(150))
    candidate = HeadStage(StubTrainer()).fit(pool, seconds=10)
    assert nauc(truth[150:].numpy(), candidate.validation_scores) > 0.9
    assert candidate.validation_version == 1
    assert candidate.test(SimpleNamespace(images=images[:7])).shape == (7, 2)


def test_the_pixel_stage_learns_from_fitting_rows_only():
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(np.round(digits.images * 255 / 16).astype(np.uint8))
    images = torch.nn.functional.interpolate(images[:, None].float(), size=32).byte()[:, None]
    labels = torch.eye(10)[digits.target]
    labels[:600] = torch.eye(10)[0]  # wrong labels on rows the stage must not fit
    pool = SimpleNamespace(images=images, labels=labels, validation_version=3,
                           validation_rows=lambda: torch.arange(1500, 1797),
                           fit_rows=lambda: torch.arange(600, 1500))
    candidate = PixelStage(multilabel=False).fit(pool)
    assert nauc(labels[1500:].numpy(), candidate.validation_scores) > 0.9


def test_the_time_policy_weighs_time_as_the_scorer_does():
    from autodl_meta import policy
    from scoring_local import metrics

    assert policy.T0 == metrics.T0
    time_policy = TimePolicy(time_budget=300)
    for t in (1.0, 30.0, 299.0):
        assert time_policy.transformed(t) == pytest.approx(metrics.transform_time(t, 300))


def test_the_runtime_nauc_is_the_scorers():
    from scoring_local.metrics import nauc as scorer_nauc

    rng = np.random.default_rng(0)
    for labels, scores in [
            (np.eye(7)[rng.integers(0, 7, 300)], np.round(rng.random((300, 7)), 1)),  # ties
            ((rng.random((120, 5)) < 0.3).astype(float), rng.random((120, 5)))]:  # multilabel
        assert nauc(labels, scores) == pytest.approx(scorer_nauc(labels, scores))
