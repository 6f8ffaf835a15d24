"""The runtime's models, each fitted by one stage, and the blend that turns them into predictions.

A stage fits one kind of model on the `TrainingPool` and returns a `Candidate`: its class
scores on the pool's validation rows, and how to score the test set.
- `PixelStage`: logistic regression on 16 x 16 pixels, within a second (the first prediction).
- `HeadStage`: a linear head on frozen pretrained features (of the Trainer's backbone).
- `FineTuneStage`: trains the network (its blocks past the config's `frozen_fraction`, and the
  head) for a time slice; a new candidate after each.

`Blend` keeps the candidates worth predicting with and their weights, from greedy ensemble
selection on the validation rows (`validation.blend_weights`): a candidate joins only when the
blend's validation NAUC rises, so a prediction is computed only when it should score better,
and no single model can hold the run while a better one exists.
"""
from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from autodl_meta.pool import TestSet, TrainingPool
from autodl_meta.quick import PixelLogistic
from autodl_meta.trainer import Trainer
from autodl_meta.validation import beats, blend_weights, nauc

logger = logging.getLogger("autodl_meta")

# Seconds the head's feature pass over the training examples may take (whatever the budget: an
# anytime run; cifar10 at 32 px embeds 2,048 in 2.5 s), and at most HEAD_SHARE of what remains.
HEAD_SECONDS = 15.0
HEAD_SHARE = 0.5
HEAD_MAX_EXAMPLES = 2048
PIXEL_MAX_EXAMPLES = 4096
RECENT_NETWORKS = 2   # network states a blend may average (snapshot averaging)
BLEND_ROUNDS = 8      # of greedy ensemble selection
SELECTION_ENV = "AUTODL_SELECTION"
MIN_GAIN = 0.003      # validation NAUC a blend must gain before a new prediction is made


@dataclass(eq=False)  # candidates are told apart by identity: they hold arrays
class Candidate:
    """One model's scores: on the validation rows now, on the test set when asked."""

    name: str
    validation_scores: np.ndarray
    validation_version: int
    # Scores the test set; None once the model it scores with has changed (a network that
    # trained on), so only the scores already computed remain.
    score_test: Callable[[TestSet], np.ndarray] | None
    test_scores: np.ndarray | None = None
    test_seconds: float = 0.0
    # Times the test pass: the run's clock for a network's candidates (autodl_meta/policy.py).
    clock: Callable[[], float] = time.monotonic

    def test(self, test_set: TestSet) -> np.ndarray:
        if self.test_scores is None:
            if self.score_test is None:
                raise RuntimeError(f"{self.name}: no test scores and its model has changed")
            began = self.clock()
            self.test_scores = np.asarray(self.score_test(test_set), dtype=np.float64)
            self.test_seconds = self.clock() - began
        return self.test_scores


def _subset(rows: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """At most `count` of `rows`, drawn at random."""
    if len(rows) <= count:
        return rows
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))
    return rows[order[:count]].sort().values


class PixelStage:
    """Logistic regression on pixels of the fitting rows."""

    name = "pixel"

    def __init__(self, multilabel: bool, seed: int = 0) -> None:
        self.multilabel, self.seed = multilabel, seed
        self.model: PixelLogistic | None = None

    def fit(self, pool: TrainingPool) -> Candidate:
        rows = _subset(pool.fit_rows(), PIXEL_MAX_EXAMPLES, self.seed)
        if not len(rows):
            raise ValueError("no training example decoded")
        model = PixelLogistic().fit(pool.images[rows], pool.labels[rows], self.multilabel)
        self.model = model
        validation = pool.validation_rows()
        return Candidate(self.name, model.predict(pool.images[validation]),
                         pool.validation_version, lambda test: model.predict(test.images))


# A stage's optional transductive step: (test scores, test features) -> refined test scores.
Refine = Callable[[np.ndarray, torch.Tensor], np.ndarray]


class HeadStage:
    """A linear head on the Trainer's frozen features of (a time-limited share of) the rows."""

    name = "head"

    def __init__(self, trainer: Trainer, seed: int = 0, refine: Refine | None = None) -> None:
        self.trainer, self.seed = trainer, seed
        self.refine = refine   # the transductive step, when the config asks for it
        self.examples = 0
        self.seconds_per_example = 0.0

    def fit(self, pool: TrainingPool, seconds: float) -> Candidate:
        validation = pool.validation_rows()
        rows = _subset(pool.fit_rows(), HEAD_MAX_EXAMPLES, self.seed)
        clock = self.trainer.clock
        began = clock()
        validation_features = self.trainer.features(pool.images[validation])
        # On a slow machine or an almost spent budget, the head learns from what was embedded
        # in its time rather than overrun the budget.
        features = self.trainer.features(pool.images[rows], seconds=seconds)
        self.examples = len(features)
        self.seconds_per_example = (clock() - began) / max(1, self.examples + len(validation))
        self.trainer.fit_head(features, pool.labels[rows[:len(features)]])
        trainer, refine = self.trainer, self.refine

        def score_test(test: TestSet) -> np.ndarray:
            test_features = trainer.features(test.images)
            scores = trainer.predict_from_features(test_features)
            return scores if refine is None else refine(scores, test_features)

        return Candidate(self.name, trainer.predict_from_features(validation_features),
                         pool.validation_version, score_test, clock=clock)


class FineTuneStage:
    """Fine-tunes the Trainer's network (but its frozen blocks) on the fitting rows, a time
    slice at a time."""

    name = "network"

    def __init__(self, trainer: Trainer, refine: Refine | None = None) -> None:
        self.trainer = trainer
        self.refine = refine   # the transductive step, when the config asks for it
        self.validation_seconds = 0.0
        self.latest: Candidate | None = None

    def train(self, pool: TrainingPool, seconds: float) -> int:
        if self.latest is not None and self.latest.test_scores is None:
            self.latest.score_test = None  # the network it would score with moves on
        return self.trainer.train_for(pool.images, pool.labels, seconds,
                                      indices=pool.fit_rows())

    def candidate(self, pool: TrainingPool) -> Candidate:
        """The network as it is now; its test scores must be taken before it trains on."""
        trainer, refine = self.trainer, self.refine
        began = trainer.clock()
        validation = trainer.predict(pool.images[pool.validation_rows()])
        self.validation_seconds = trainer.clock() - began

        def score_test(test: TestSet) -> np.ndarray:
            if refine is None:
                return trainer.predict(test.images)
            return refine(*trainer.predict_with_features(test.images))

        self.latest = Candidate(f"{self.name}@{trainer.steps}", validation,
                                pool.validation_version, score_test, clock=trainer.clock)
        return self.latest


@dataclass
class Blend:
    """The candidates a prediction averages, weighted by ensemble selection on validation."""

    # "blend": ensemble selection over the candidates; "best": the best one alone (the hard
    # switch, kept to measure the blend against: README, "Choosing the prediction").
    kind: str = field(default_factory=lambda: os.environ.get(SELECTION_ENV, "blend"))
    candidates: list[Candidate] = field(default_factory=list)
    weights: np.ndarray = field(default_factory=lambda: np.zeros(0))
    score: float = math.nan   # validation NAUC of the weighted average
    version: int = 0          # grows with every change: a new prediction is due

    def consider(self, candidate: Candidate, truth: np.ndarray) -> bool:
        """Take `candidate` in when the blend's validation NAUC rises (or, with no defined
        validation score at all, when it is the newest model); return whether it did."""
        pool = [c for c in self.candidates if c.name != candidate.name]
        if candidate.name.startswith(FineTuneStage.name):
            networks = [c for c in pool if c.name.startswith(FineTuneStage.name)]
            pool = [c for c in pool if c not in networks[:-(RECENT_NETWORKS - 1) or None]]
        pool.append(candidate)
        weights = blend_weights(truth, [c.validation_scores for c in pool],
                                rounds=1 if self.kind == "best" else BLEND_ROUNDS,
                                min_gain=MIN_GAIN)
        if not weights.any():
            own = nauc(truth, candidate.validation_scores) if len(truth) else math.nan
            if not math.isnan(self.score) or not math.isnan(own):
                return False
            pool, weights = [candidate], np.ones(1)  # no evidence: the newest model
            score = math.nan
        else:
            score = nauc(truth, sum(w * c.validation_scores for w, c in zip(weights, pool)))
            if self.candidates and not beats(score, self.score + MIN_GAIN):
                return False
        kept = weights > 0
        self.candidates = [c for c, keep in zip(pool, kept) if keep]
        self.weights = weights[kept]
        self.score = score
        self.version += 1
        return True

    def drop_untestable(self) -> None:
        """Forget candidates whose test scores can no longer be computed."""
        self._keep([i for i, c in enumerate(self.candidates)
                    if c.test_scores is not None or c.score_test is not None])

    def drop_stale(self, version: int) -> None:
        """Forget candidates scored on another validation split (they cannot be compared)."""
        self._keep([i for i, c in enumerate(self.candidates) if c.validation_version == version])

    def _keep(self, keep: list[int]) -> None:
        if len(keep) == len(self.candidates):
            return
        self.candidates = [self.candidates[i] for i in keep]
        self.weights = self.weights[keep] / max(self.weights[keep].sum(), 1e-12)
        self.score = math.nan  # re-established by the next candidate
        self.version += 1

    def predict(self, test_set: TestSet) -> np.ndarray:
        return sum(w * c.test(test_set) for w, c in zip(self.weights, self.candidates))

    def described(self) -> dict[str, float]:
        return {c.name: round(float(w), 4) for c, w in zip(self.candidates, self.weights)}
