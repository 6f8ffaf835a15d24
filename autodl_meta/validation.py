"""Held-out validation inside the run: which examples to hold out, and what the scores say.

The score is the platform's per-prediction one, 2 * AUC - 1 averaged over the classes present.
It is undefined (NaN) when no class of the validation examples has both positives and
negatives, and an undefined score never wins or ties a comparison (`beats`).

The split is drawn from every record's labels (read before any image is decoded), stratified
over the classes, so it represents the data whatever the record order. Groups of near-copies
(frames of one object, bursts of one scene) would leak across a random split and make it
optimistic: training examples that are near-copies of a validation example are kept out of
training (`near_copy_threshold`, `closest_reference`), unless so many are close that the
validation example sits in a dense class rather than in a small group of shots.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.stats import rankdata

MAX_VALIDATION = 256
MIN_TRAIN_FOR_VALIDATION = 60
VALIDATION_SHARE = 0.1
# Near-copies (README, "Validation"): cosine similarity of standardised 16 x 16 pixel features
# at least the 99th percentile of the similarity between an image and its closest image of
# another class (at least NEAR_COPY_FLOOR); and a validation example with more such neighbours
# than NEAR_COPY_GROUP sits in a dense class (digits), not in a group of shots of one object.
NEAR_COPY_FLOOR = 0.9
NEAR_COPY_QUANTILE = 0.99
NEAR_COPY_GROUP = 8
# ... and when more than this share of the training examples would be left out, the data is
# dense (sets of digits or faces measured here), not made of copies: none is left out.
NEAR_COPY_SHARE = 0.1
NEAR_COPY_SAMPLE = 1000


def nauc(labels: np.ndarray, scores: np.ndarray) -> float:
    """2 * macro AUC - 1 over the columns holding both classes; NaN when none does. The AUC is
    the scorer's rank form (ties count half), computed for all columns at once: a blend weighs
    its candidates with dozens of these per slice, on up to hundreds of classes."""
    labels = np.asarray(labels) > 0.5
    if len(labels) == 0:
        return math.nan
    positives = labels.sum(axis=0)
    valid = (positives > 0) & (positives < len(labels))
    if not valid.any():
        return math.nan
    labels, positives = labels[:, valid], positives[valid]
    ranks = rankdata(np.asarray(scores, dtype=np.float64)[:, valid], axis=0)
    negatives = len(labels) - positives
    auc = ((ranks * labels).sum(axis=0) - positives * (positives + 1) / 2) / (positives *
                                                                              negatives)
    return 2 * float(auc.mean()) - 1


def beats(score: float, other: float) -> bool:
    """Whether `score` is better than `other`: an undefined score never wins, and a defined
    one beats an undefined one."""
    if math.isnan(score):
        return False
    return math.isnan(other) or score > other


def class_of(labels: np.ndarray) -> np.ndarray:
    """One class per example for stratifying: its first positive label, -1 when it has none."""
    labels = np.asarray(labels)
    first = labels.argmax(axis=1)
    return np.where(labels.max(axis=1) > 0, first, -1)


def stratified_order(classes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Every index, in rounds that take one example of each class (random within a class,
    classes in random order): any prefix of the order is as balanced as the data allows."""
    classes = np.asarray(classes)
    groups = [rng.permutation(np.flatnonzero(classes == c)) for c in np.unique(classes)]
    groups = [groups[i] for i in rng.permutation(len(groups))]
    rounds = max((len(g) for g in groups), default=0)
    order = [g[r] for r in range(rounds) for g in groups if r < len(g)]
    return np.asarray(order, dtype=np.int64)


def choose_validation(classes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Positions to hold out: stratified, up to MAX_VALIDATION or VALIDATION_SHARE of the data,
    only from classes with at least two examples (one stays for training); empty below
    MIN_TRAIN_FOR_VALIDATION examples."""
    classes = np.asarray(classes)
    if len(classes) < MIN_TRAIN_FOR_VALIDATION:
        return np.zeros(0, dtype=np.int64)
    size = min(MAX_VALIDATION, int(VALIDATION_SHARE * len(classes)))
    values, counts = np.unique(classes, return_counts=True)
    eligible = np.isin(classes, values[counts >= 2])
    order = stratified_order(np.where(eligible, classes, -2), rng)
    order = order[eligible[order]]
    # A class gives at most half its examples, so that training keeps most of each.
    taken: dict[int, int] = {}
    limit = {int(v): int(c) // 2 for v, c in zip(values, counts)}
    chosen = []
    for index in order:
        label = int(classes[index])
        if taken.get(label, 0) < max(1, limit[label]):
            chosen.append(index)
            taken[label] = taken.get(label, 0) + 1
            if len(chosen) == size:
                break
    return np.sort(np.asarray(chosen, dtype=np.int64))


def standardised(features: torch.Tensor) -> torch.Tensor:
    """Rows centred and scaled to unit length, for cosine similarities."""
    features = features.float()
    features = features - features.mean(1, keepdim=True)
    return torch.nn.functional.normalize(features, dim=1)


def near_copy_threshold(features: torch.Tensor, classes: np.ndarray) -> float:
    """The similarity above which two `standardised` rows count as near-copies: what images
    of different classes do not reach (their closest pair, 99th percentile), at least
    NEAR_COPY_FLOOR; 1 (nothing is a copy) when the rows hold one class only."""
    features, classes = features[:NEAR_COPY_SAMPLE], np.asarray(classes)[:NEAR_COPY_SAMPLE]
    same = torch.from_numpy(classes[:, None] == classes[None, :])
    if bool(same.all()):
        return 1.0
    closest_other = (features @ features.T).masked_fill(same, -1.0).amax(1)
    return max(NEAR_COPY_FLOOR, float(torch.quantile(closest_other, NEAR_COPY_QUANTILE)))


def closest_reference(reference: torch.Tensor, candidates: torch.Tensor, threshold: float,
                      chunk: int = 4096) -> torch.Tensor:
    """For each `candidates` row, the index of the `reference` row it is a near-copy of
    (the most similar one at or above `threshold`), or -1."""
    if not len(reference) or not len(candidates):
        return torch.full((len(candidates),), -1, dtype=torch.long)
    found = []
    for start in range(0, len(candidates), chunk):
        similarity, index = (candidates[start:start + chunk] @ reference.T).max(1)
        found.append(torch.where(similarity >= threshold, index, -1))
    return torch.cat(found)


def blend_weights(truth: np.ndarray, candidate_scores: list[np.ndarray], rounds: int = 8,
                  min_gain: float = 0.003) -> np.ndarray:
    """Weights over the candidates from greedy ensemble selection with replacement on the
    validation examples (Caruana et al., 2004): the best candidate first, then each round adds
    the candidate that most improves the average's NAUC, if by `min_gain` at least (smaller
    gains on a few hundred examples are noise, and chasing them overfits the split). A
    candidate whose own score is undefined gets no weight; all zeros when none has a defined
    score."""
    weights = np.zeros(len(candidate_scores))
    own = [nauc(truth, scores) for scores in candidate_scores]
    if all(math.isnan(score) for score in own):
        return weights
    first = int(np.nanargmax(own))
    weights[first] = 1
    total, best = candidate_scores[first].astype(np.float64), own[first]
    for _ in range(rounds - 1):
        round_best, round_pick = math.nan, None
        for index, scores in enumerate(candidate_scores):
            if math.isnan(own[index]):
                continue
            score = nauc(truth, total + scores)
            if beats(score, round_best):
                round_best, round_pick = score, index
        if round_pick is None or not beats(round_best, best + min_gain):
            break
        weights[round_pick] += 1
        total = total + candidate_scores[round_pick]
        best = round_best
    return weights / weights.sum()
