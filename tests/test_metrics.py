"""The platform's metric: NAUC with valid columns and tied ranks, accuracy, ALC."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from scoring_local import metrics


def test_alc_reference_values():
    # Self-test values of the platform reference (T = 1200, t0 = 60).
    assert metrics.alc([60, 300, 1100], [0.5, 0.7, 0.8], 1200) == pytest.approx(0.471177, abs=1e-6)
    assert metrics.alc([0], [1.0], 1200) == pytest.approx(1.0)
    assert metrics.alc([60], [1.0], 1200) == pytest.approx(0.772330, abs=1e-6)
    assert metrics.alc([], [], 1200) == 0.0


def test_alc_ignores_predictions_after_the_budget():
    assert metrics.alc([60, 1300], [0.5, 1.0], 1200) == pytest.approx(metrics.alc([60], [0.5], 1200))


def test_transform_time_table():
    x = metrics.transform_time(np.array([1, 10, 60, 300, 1200]), 1200)
    np.testing.assert_allclose(x, [0.0054, 0.0506, 0.2277, 0.5885, 1.0], atol=1e-4)


def test_nauc_matches_sklearn_macro_auc_on_valid_columns():
    rng = np.random.default_rng(0)
    solution = np.eye(5)[rng.integers(0, 4, 200)]  # class 4 never occurs: not a valid column
    prediction = rng.random((200, 5)).round(1)  # rounding makes many ties
    valid = metrics.valid_columns(solution)
    assert list(valid) == [0, 1, 2, 3]
    expected = 2 * roc_auc_score(solution[:, valid], prediction[:, valid], average="macro") - 1
    assert metrics.nauc(solution, prediction) == pytest.approx(expected, abs=1e-12)


def test_nauc_extremes():
    solution = np.eye(3)[[0, 1, 2, 0, 1, 2]]
    assert metrics.nauc(solution, solution) == pytest.approx(1.0)
    assert metrics.nauc(solution, 1 - solution) == pytest.approx(-1.0)
    assert metrics.nauc(solution, np.zeros_like(solution)) == pytest.approx(0.0)


def test_nauc_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        metrics.nauc(np.eye(3), np.zeros((3, 2)))


def test_accuracy_and_multiclass_detection():
    solution = np.eye(3)[[0, 1, 2, 1]]
    assert metrics.is_multiclass(solution)
    assert not metrics.is_multiclass(np.array([[1, 1, 0], [0, 1, 0]]))
    prediction = np.array([[2, 0, 0], [0, 1, 1], [0, 0, 0], [1, 1, 2]], dtype=float)
    assert metrics.accuracy(solution, prediction) == pytest.approx((1 + 0.5 + 0 + 0.25) / 4)
