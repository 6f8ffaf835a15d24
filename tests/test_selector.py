"""The meta-classifiers (scored by autodl_meta/selector.py, trained by
offline/meta_classifiers.py) on a synthetic problem: five Gaussian blobs stand in for the
fingerprints of five known datasets."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from autodl_meta.selector import (KINDS, MOMENTS, MetaClassifier, SelectorError, batch_moments,
                                  load_selector)
from offline.meta_classifiers import TRAINABLE, build, save_selector

DATASETS = 5
DIM = 64
TRAIN, HELD_OUT = 300, 128
NAMES = [f"set{k}" for k in range(DATASETS)]
# Small training budgets: the blobs are easy, and the file must stay well under a minute.
FAST = {"nearest_centroid": {}, "mlp_vote": {"epochs": 4},
        "moments_mlp": {"steps": 60, "samples_per_step": 16}, "vae_ttest": {"epochs": 8}}


def blobs(samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`samples` per dataset around fixed means; single samples overlap, batches do not."""
    means = np.random.default_rng(0).normal(0.0, 0.3, (DATASETS, DIM))
    rng = np.random.default_rng(seed)
    features = np.concatenate([mean + rng.normal(0.0, 1.0, (samples, DIM)) for mean in means])
    return features.astype(np.float32), np.repeat(np.arange(DATASETS), samples)


@pytest.fixture(scope="module")
def train() -> tuple[np.ndarray, np.ndarray]:
    return blobs(TRAIN, seed=1)


@pytest.fixture(scope="module")
def held_out() -> tuple[np.ndarray, np.ndarray]:
    return blobs(HELD_OUT, seed=2)


@pytest.fixture(scope="module", params=sorted(KINDS))
def fitted(request, train) -> MetaClassifier:
    features, ids = train
    return build(request.param, **FAST[request.param]).fit(features, ids, NAMES, seed=0)


def accuracy(classifier: MetaClassifier, held_out, batch_size: int) -> float:
    features, ids = held_out
    hits = [classifier.select(features[ids == k][start:start + batch_size])[0] == NAMES[k]
            for k in range(DATASETS) for start in range(0, HELD_OUT, batch_size)]
    return float(np.mean(hits))


def test_batches_of_32_identify_every_dataset(fitted, held_out):
    features, ids = held_out
    for k in range(DATASETS):
        name, confidence = fitted.select(features[ids == k][:32])
        assert name == NAMES[k]
        assert 0.0 < confidence <= 1.0
    assert accuracy(fitted, held_out, 32) >= accuracy(fitted, held_out, 1)


def test_scores_are_distributions(fitted, held_out):
    features, _ = held_out
    for batch in (features[:1], features[:2], features[:64], np.zeros((1, DIM), np.float32)):
        scores = fitted.scores(batch)
        assert scores.shape == (DATASETS,)
        assert np.isfinite(scores).all() and (scores >= 0).all()
        assert scores.sum() == pytest.approx(1.0)


def test_save_and_load_give_identical_scores(fitted, held_out, tmp_path):
    path = tmp_path / "selector.npz"
    save_selector(fitted, path)
    loaded = load_selector(path)
    assert (loaded.kind, loaded.names, loaded.params) == (fitted.kind, fitted.names, fitted.params)
    # The run loads the runtime's class, which the trained one extends: one scoring code.
    assert type(loaded) is KINDS[fitted.kind] and isinstance(fitted, KINDS[fitted.kind])
    assert sorted(TRAINABLE) == sorted(KINDS)
    features, _ = held_out
    for batch in (features[:1], features[:32]):
        np.testing.assert_array_equal(loaded.scores(batch), fitted.scores(batch))


def test_wrong_batch_dimension_is_rejected(fitted):
    with pytest.raises(ValueError, match="shape"):
        fitted.scores(np.zeros((4, DIM + 1), np.float32))
    with pytest.raises(ValueError, match="shape"):
        fitted.scores(np.zeros((0, DIM), np.float32))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_fit_is_deterministic_and_survives_degenerate_data(kind, train):
    features, ids = train
    features = features[::10].copy()
    ids = ids[::10].copy()
    features[:, :8] = 3.0                       # constant features
    features = np.concatenate([features, np.ones((1, DIM), np.float32)])
    ids = np.concatenate([ids, [DATASETS]])     # a sixth dataset of a single sample
    names = [*NAMES, "single"]
    first = build(kind, **FAST[kind]).fit(features, ids, names, seed=3)
    second = build(kind, **FAST[kind]).fit(features, ids, names, seed=3)
    for batch in (features[:1], features[:5], np.full((3, DIM), 3.0, np.float32)):
        scores = first.scores(batch)
        assert np.isfinite(scores).all() and scores.sum() == pytest.approx(1.0)
        np.testing.assert_array_equal(scores, second.scores(batch))


@pytest.mark.parametrize("features, ids, names, message", [
    (np.zeros((4, 3)), np.array([0, 1, 0]), ["a", "b"], "dataset_ids"),
    (np.zeros((4, 3)), np.array([0, 0, 0, 0]), ["a"], "at least 2"),
    (np.zeros((4, 3)), np.array([0, 1, 2, 0]), ["a", "b"], "0..1"),
    (np.full((4, 3), np.nan), np.array([0, 1, 0, 1]), ["a", "b"], "finite"),
    (np.zeros((4, 3)), np.array([0, 0, 0, 0]), ["a", "b"], "no samples"),
    (np.zeros(4), np.array([0, 1, 0, 1]), ["a", "b"], "shape"),
])
def test_fit_rejects_bad_input(features, ids, names, message):
    with pytest.raises(ValueError, match=message):
        build("nearest_centroid").fit(features, ids, names)


def test_build_validates_kind_and_parameters():
    with pytest.raises(ValueError, match="nearest_centroid"):
        build("random_forest")
    with pytest.raises(ValueError, match="unknown parameter"):
        build("mlp_vote", layers=3)
    with pytest.raises(ValueError, match="'trim'"):
        build("moments_mlp", trim=0.5)
    with pytest.raises(ValueError, match="'moments'"):
        build("moments_mlp", moments=("mean", "mode"))
    with pytest.raises(ValueError, match="'hidden'"):
        build("vae_ttest", hidden=12.5)
    assert build("moments_mlp", moments=["mean"], learning_rate=1).params["moments"] == ("mean",)


def test_batch_moments_trim_and_degenerate_batches():
    values = np.arange(10, dtype=np.float32)[None, :, None]
    values[0, 9, 0] = 1000.0                    # an outlier, dropped by a 0.1 trim
    mean, median, std = batch_moments(values, 0.1, ("mean", "median", "std"))[0]
    assert mean == pytest.approx(np.arange(1, 9).mean())
    assert median == pytest.approx(4.5)
    assert std == pytest.approx(np.arange(1, 9).std())
    single = batch_moments(np.ones((1, 1, 4), np.float32), 0.4, MOMENTS)
    assert single.shape == (1, 6 * 4)
    np.testing.assert_array_equal(single[0, 8:], 0.0)   # std, variance, skewness, kurtosis
    pair = batch_moments(np.array([[[0.0], [2.0]]], np.float32), 0.4, MOMENTS)[0]
    np.testing.assert_allclose(pair, [1.0, 1.0, 1.0, 1.0, 0.0, -2.0])


# -- corrupted files -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(tmp_path_factory, train) -> Path:
    features, ids = train
    path = tmp_path_factory.mktemp("saved") / "selector.npz"
    save_selector(build("mlp_vote", epochs=1).fit(features, ids, NAMES), path)
    return path


def rewrite(source: Path, target: Path, drop: str = "", meta: dict | None = None) -> Path:
    with np.load(source) as data:
        arrays = {name: data[name] for name in data.files if name != drop}
    if meta is not None:
        arrays["meta"] = np.array(json.dumps({**json.loads(str(arrays["meta"])), **meta}))
    np.savez(target, **arrays)
    return target


def npy_bytes(array: np.ndarray) -> bytes:
    """A single .npy array, which np.load also reads, but without the archive's fields."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize("corrupt, field", [
    (lambda saved, path: rewrite(saved, path, drop="net.0.weight"), "net.0.weight"),
    (lambda saved, path: rewrite(saved, path, drop="meta"), "meta"),
    (lambda saved, path: rewrite(saved, path, meta={"kind": "random_forest"}), "meta.kind"),
    (lambda saved, path: rewrite(saved, path, meta={"dim": DIM + 1}), "feature_mean"),
    (lambda saved, path: rewrite(saved, path, meta={"params": {"hidden": "wide"}}),
     "meta.params"),
    (lambda saved, path: path.write_text("not an archive"), "not an .npz"),
    (lambda saved, path: path.write_bytes(npy_bytes(np.zeros(3))), "not an .npz"),
    (lambda saved, path: None, "missing"),
])
def test_load_rejects_corrupted_files(saved, tmp_path, corrupt, field):
    path = tmp_path / "broken_selector.npz"
    corrupt(saved, path)
    with pytest.raises(SelectorError) as error:
        load_selector(path)
    assert "broken_selector.npz" in str(error.value)
    assert field in str(error.value)


def test_load_rejects_a_truncated_archive(saved, tmp_path):
    path = tmp_path / "truncated.npz"
    path.write_bytes(saved.read_bytes()[:200])
    with pytest.raises(SelectorError, match="truncated.npz: not an .npz"):
        load_selector(path)
