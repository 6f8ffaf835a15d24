"""Held-out validation inside the run: which model's predictions are worth returning.

Uses the platform's per-prediction score, 2 * AUC - 1 averaged over the classes present.
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

MAX_VALIDATION = 256
MIN_TRAIN_FOR_VALIDATION = 60


def nauc(labels: np.ndarray, scores: np.ndarray) -> float:
    """2 * macro AUC - 1 over the columns holding both classes; 0.0 when none does."""
    positives = labels.sum(axis=0)
    valid = (positives > 0) & (positives < len(labels))
    if not valid.any():
        return 0.0
    return 2 * float(roc_auc_score(labels[:, valid], scores[:, valid], average="macro")) - 1


def split_validation(count: int, seed: int = 0) -> torch.Tensor:
    """Indices of a random validation subset of the first `count` examples (maybe empty)."""
    if count < MIN_TRAIN_FOR_VALIDATION:
        return torch.empty(0, dtype=torch.long)
    size = min(MAX_VALIDATION, count // 10)
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:size]


def complement(indices: torch.Tensor, count: int) -> torch.Tensor:
    """All indices below `count` that are not in `indices`."""
    mask = torch.ones(count, dtype=torch.bool)
    mask[indices] = False
    return torch.nonzero(mask).squeeze(1)
