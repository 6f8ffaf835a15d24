"""Training the meta-classifiers: each kind of `autodl_meta.selector` with its `fit`.

The runtime module holds what a run needs (scoring, the saved arrays, `load_selector`); each
class here subclasses its runtime kind and adds the training, so a fitted classifier scores
exactly as the runtime's and `save_selector` writes the arrays `load_selector` reads.

    classifier = build("nearest_centroid").fit(features, dataset_ids, names, seed=0)
    save_selector(classifier, "metadata/selector.npz")
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from sklearn.cluster import KMeans
from torch import nn
from torch.nn import functional as F

from autodl_meta.selector import (FORMAT_VERSION, LATENT_VAR_FLOOR, MetaClassifier,
                                  MlpVote, MomentsMlp, NearestCentroid, VaeTTest, _Vae,
                                  batch_moments, feature_scale)

logger = logging.getLogger(__name__)


class Trainable:
    """The estimator half of a meta-classifier: `fit` standardises, then calls `_fit`."""

    kind: ClassVar[str]

    def fit(self, features: np.ndarray, dataset_ids: np.ndarray, names: list[str],
            seed: int = 0) -> MetaClassifier:
        """Train on `features` [n, d] of the known datasets; `dataset_ids[i]` indexes `names`."""
        x, ids = _check_training_data(features, dataset_ids, names)
        began = time.monotonic()
        self.names = list(names)
        self.dim = x.shape[1]
        self._mean = x.mean(axis=0, dtype=np.float64).astype(np.float32)
        std = x.std(axis=0, dtype=np.float64)
        self._std = feature_scale(std).astype(np.float32)
        # A private RNG state: seeded results without disturbing the caller's torch RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self._fit(self._standardise(x), ids, np.random.default_rng(seed))
        logger.info("%s fitted on %d samples of %d datasets (d=%d) in %.1f s", self.kind,
                    len(x), len(names), self.dim, time.monotonic() - began)
        return self

    def _fit(self, z: np.ndarray, ids: np.ndarray, rng: np.random.Generator) -> None:
        raise NotImplementedError

    @staticmethod
    def _optimise(module: nn.Module, loss_at: Callable[[int], torch.Tensor], steps: int,
                  learning_rate: float) -> float:
        """Adam on `loss_at(step)` for `steps` steps; returns the last loss."""
        optimiser = torch.optim.Adam(module.parameters(), lr=learning_rate)
        module.train()
        loss = torch.zeros(())
        for step in range(steps):
            loss = loss_at(step)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        module.eval()
        return float(loss.detach())

    def _train_net(self, draw: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
                   steps: int) -> None:
        """The perceptron kinds: cross-entropy to the dataset id on the (inputs, ids) that
        `draw(step)` returns."""
        self._net = self._new_net()

        def loss_at(step: int) -> torch.Tensor:
            inputs, targets = draw(step)
            return F.cross_entropy(self._net(inputs), targets)

        loss = self._optimise(self._net, loss_at, steps, self.learning_rate)
        logger.debug("%s: last training loss %.4f after %d steps", self.kind, loss, steps)


@dataclass(eq=False, kw_only=True)
class NearestCentroidTraining(Trainable, NearestCentroid):
    def _fit(self, z: np.ndarray, ids: np.ndarray, rng: np.random.Generator) -> None:
        centroids, owners = [], []
        for dataset in range(len(self.names)):
            samples = z[ids == dataset]
            # More clusters than distinct points would only duplicate centroids (and warn).
            count = min(self.clusters_per_dataset, len(np.unique(samples, axis=0)))
            kmeans = KMeans(n_clusters=count, n_init=self.n_init, max_iter=self.max_iter,
                            random_state=int(rng.integers(2**31 - 1))).fit(samples)
            centroids.append(kmeans.cluster_centers_.astype(np.float32))
            owners.append(np.full(count, dataset, dtype=np.int64))
        self._centroids = np.concatenate(centroids)
        self._owners = np.concatenate(owners)


@dataclass(eq=False, kw_only=True)
class MlpVoteTraining(Trainable, MlpVote):
    def _fit(self, z: np.ndarray, ids: np.ndarray, rng: np.random.Generator) -> None:
        order = _balanced_batches(ids, len(self.names), self.epochs, self.batch_size, rng)
        inputs, targets = torch.from_numpy(z), torch.from_numpy(ids)
        self._train_net(lambda step: (inputs[order[step]], targets[order[step]]), len(order))


@dataclass(eq=False, kw_only=True)
class MomentsMlpTraining(Trainable, MomentsMlp):
    def _fit(self, z: np.ndarray, ids: np.ndarray, rng: np.random.Generator) -> None:
        per_dataset = [z[ids == k] for k in range(len(self.names))]

        def draw(size: int) -> tuple[np.ndarray, np.ndarray]:
            rows, targets = [], []
            for k, samples in enumerate(per_dataset):
                b = min(size, len(samples))
                count = max(1, self.samples_per_step // b)
                # The b smallest of uniform keys: a random subset, no sample twice in a batch.
                keys = rng.random((count, len(samples)))
                chosen = np.argpartition(keys, b - 1, axis=1)[:, :b]
                rows.append(batch_moments(samples[chosen], self.trim, self.moments))
                targets.append(np.full(count, k))
            return np.concatenate(rows), np.concatenate(targets)

        calibration = np.concatenate([draw(size)[0] for size in self.train_batch_sizes])
        self._moment_mean = calibration.mean(axis=0)
        std = calibration.std(axis=0)
        self._moment_std = feature_scale(std).astype(np.float32)
        sizes = rng.choice(self.train_batch_sizes, size=self.steps)

        def standardised_draw(step: int) -> tuple[torch.Tensor, torch.Tensor]:
            inputs, targets = draw(int(sizes[step]))
            return torch.from_numpy(self._standardise_moments(inputs)), torch.from_numpy(targets)

        self._train_net(standardised_draw, self.steps)


def vae_loss(vae: _Vae, x: torch.Tensor) -> torch.Tensor:
    """Negative ELBO per sample: Gaussian (squared error) reconstruction plus KL."""
    mean, log_var = vae.encode(x)
    latent = mean + torch.randn_like(mean) * (0.5 * log_var).exp()
    reconstruction = 0.5 * (vae.decoder(latent) - x).pow(2).sum(dim=1)
    kl = 0.5 * (mean.pow(2) + log_var.exp() - 1.0 - log_var).sum(dim=1)
    return (reconstruction + kl).mean()


@dataclass(eq=False, kw_only=True)
class VaeTTestTraining(Trainable, VaeTTest):
    def _fit(self, z: np.ndarray, ids: np.ndarray, rng: np.random.Generator) -> None:
        # Balanced too, so that the latent space also separates the small datasets.
        order = _balanced_batches(ids, len(self.names), self.epochs, self.batch_size, rng)
        inputs = torch.from_numpy(z)
        self._vae = self._new_vae()
        loss = self._optimise(self._vae, lambda step: vae_loss(self._vae, inputs[order[step]]),
                              len(order), self.learning_rate)
        logger.debug("vae_ttest: last training loss %.4f after %d steps", loss, len(order))
        with torch.no_grad():
            codes = self._vae.encode(inputs)[0].double().numpy()
        groups = [codes[ids == k] for k in range(len(self.names))]
        self._latent_mean = np.stack([group.mean(axis=0) for group in groups])
        # One sample has no spread: its variance is 0, then floored like constant latents.
        self._latent_var = np.maximum(np.stack([group.var(axis=0, ddof=min(1, len(group) - 1))
                                                for group in groups]), LATENT_VAR_FLOOR)
        self._counts = np.array([len(group) for group in groups], dtype=np.int64)


TRAINABLE: dict[str, type[MetaClassifier]] = {
    cls.kind: cls for cls in (NearestCentroidTraining, MlpVoteTraining, MomentsMlpTraining,
                              VaeTTestTraining)}


def build(kind: str, **params: Any) -> MetaClassifier:
    """An unfitted meta-classifier of `kind` with the given hyper-parameters."""
    if kind not in TRAINABLE:
        raise ValueError(f"unknown meta-classifier kind {kind!r}; known kinds: "
                         f"{sorted(TRAINABLE)}")
    known = {spec.name for spec in fields(TRAINABLE[kind])}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"{kind}: unknown parameter(s) {unknown}; known: {sorted(known)}")
    return TRAINABLE[kind](**params)


def save_selector(classifier: MetaClassifier, path: Path | str) -> None:
    """Write a fitted classifier to one .npz file (atomically: readers never see half a file)."""
    if not classifier.names:
        raise ValueError(f"{classifier.kind}: cannot save an unfitted classifier")
    path = Path(path)
    meta = {"format_version": FORMAT_VERSION, "kind": classifier.kind,
            "names": classifier.names, "dim": classifier.dim, "params": classifier.params}
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as handle:
        np.savez(handle, meta=np.array(json.dumps(meta)), **classifier._get_arrays())
    os.replace(partial, path)


def _check_training_data(features: np.ndarray, dataset_ids: np.ndarray,
                         names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(features)
    ids = np.asarray(dataset_ids)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"features must have shape [n, d], got {list(x.shape)}")
    if not np.issubdtype(x.dtype, np.number) or not np.isfinite(x).all():
        raise ValueError("features must be finite numbers")
    if ids.shape != (len(x),) or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"dataset_ids must be integers of shape [{len(x)}], got "
                         f"{ids.dtype} {list(ids.shape)}")
    if len(names) < 2 or len(set(names)) != len(names) \
            or not all(isinstance(name, str) for name in names):
        raise ValueError(f"names must be at least 2 distinct strings, got {names!r}")
    if ids.min() < 0 or ids.max() >= len(names):
        raise ValueError(f"dataset_ids must lie in 0..{len(names) - 1}")
    empty = [names[i] for i in np.flatnonzero(np.bincount(ids, minlength=len(names)) == 0)]
    if empty:
        raise ValueError(f"no samples for dataset(s) {empty}")
    return x.astype(np.float32), ids.astype(np.int64)


def _balanced_batches(ids: np.ndarray, n_datasets: int, epochs: int, batch_size: int,
                      rng: np.random.Generator) -> torch.Tensor:
    """Sample indices [steps, batch_size] for `epochs` times len(ids) samples: each a uniform
    dataset, then a uniform sample of it. Known datasets differ in size by orders of magnitude;
    this keeps the small ones heard.
    """
    steps = max(1, math.ceil(epochs * len(ids) / batch_size))
    order = np.argsort(ids, kind="stable")
    counts = np.bincount(ids, minlength=n_datasets)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    datasets = rng.integers(n_datasets, size=(steps, batch_size))
    within = (rng.random((steps, batch_size)) * counts[datasets]).astype(np.int64)
    return torch.from_numpy(order[starts[datasets] + within])
