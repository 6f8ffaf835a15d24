"""The platform's metrics: NAUC per prediction, accuracy, and the ALC of a learning curve.

NAUC = 2 * AUC - 1, AUC averaged without weights over the columns of the solution that hold
both classes, with tie-averaged ranks (Mann-Whitney form). ALC is the area under the step
function ("post") of NAUC against transformed time log(1 + t/t0) / log(1 + T/t0), starting at
(0, 0) and holding the last score until 1.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import rankdata

T0 = 60.0


def valid_columns(solution: np.ndarray) -> np.ndarray:
    """Indices of the columns that hold both positives and negatives."""
    solution = np.asarray(solution, dtype=float)
    positives = (solution == 1).sum(axis=0)
    return np.flatnonzero((positives > 0) & (positives < solution.shape[0]))


def nauc(solution: np.ndarray, prediction: np.ndarray) -> float:
    """2 * AUC - 1, AUC averaged over the valid columns; 0.0 when none is valid."""
    solution = as_matrix(solution)
    prediction = as_matrix(prediction)
    if solution.shape != prediction.shape:
        raise ValueError(f"solution shape {solution.shape} != prediction shape "
                         f"{prediction.shape}")
    aucs = []
    for k in valid_columns(solution):
        is_positive = solution[:, k] == 1
        ranks = rankdata(prediction[:, k])  # 1-based, ties get their average rank
        n_pos = is_positive.sum()
        n_neg = len(is_positive) - n_pos
        aucs.append((ranks[is_positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return 2 * float(np.mean(aucs)) - 1 if aucs else 0.0


def is_multiclass(solution: np.ndarray) -> bool:
    """True when every row of the solution is one-hot."""
    solution = as_matrix(solution)
    return bool(np.all(solution.sum(axis=1) == 1) and np.all((solution == 0) | (solution == 1)))


def accuracy(solution: np.ndarray, prediction: np.ndarray) -> float:
    """The platform's accuracy: predictions L1-normalised per row, dotted with the solution."""
    solution = as_matrix(solution)
    prediction = as_matrix(prediction)
    normalised = prediction / (np.abs(prediction).sum(axis=1, keepdims=True) + 1e-15)
    return float((solution * normalised).sum() / solution.shape[0])


def transform_time(t: float | np.ndarray, time_budget: float, t0: float = T0):
    return np.log1p(np.asarray(t, dtype=float) / t0) / np.log1p(time_budget / t0)


def alc(timestamps: Sequence[float], scores: Sequence[float], time_budget: float,
        t0: float = T0) -> float:
    """Area under the step learning curve; `timestamps` are seconds since the start.

    Points later than the budget are dropped (the platform's plot does this; its `get_alc`
    does not, which only matters when the scorer failed to stop ingestion in time).
    """
    kept = [(t, s) for t, s in zip(timestamps, scores) if t <= time_budget]
    x = [0.0] + [float(transform_time(t, time_budget, t0)) for t, _ in kept] + [1.0]
    y = [0.0] + [s for _, s in kept] + ([kept[-1][1]] if kept else [0.0])
    return float(sum((x[i + 1] - x[i]) * y[i] for i in range(len(x) - 1)))


def as_matrix(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    return values.reshape(-1, 1) if values.ndim == 1 else values
