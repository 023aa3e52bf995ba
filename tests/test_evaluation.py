"""Metrics, ROC tables, Youden threshold and the bootstrap CI against hand-worked examples."""

import numpy as np
import pytest

from metastases.errors import UserError
from metastases.evaluation import auc, bootstrap_auc_ci, metrics_at, roc_table, youden_threshold

# 2 negatives, 2 positives: of the 4 (positive, negative) pairs, 3 are ranked correctly -> AUC 3/4
PAIR_LABELS = np.array([0, 0, 1, 1])
PAIR_SCORES = np.array([0.1, 0.4, 0.35, 0.8])


def test_auc_of_a_hand_worked_example() -> None:
    assert auc(PAIR_LABELS, PAIR_SCORES) == pytest.approx(0.75)


def test_metrics_at_a_threshold_match_the_hand_count() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.2, 0.6, 0.4, 0.7, 0.3, 0.9, 0.55])
    # at 0.5: TP 3 (0.7, 0.9, 0.55), FN 1 (0.3), FP 1 (0.6), TN 2
    result = metrics_at(labels, scores, 0.5)
    assert result["accuracy"] == pytest.approx(5 / 7)
    assert result["sensitivity"] == pytest.approx(3 / 4)
    assert result["specificity"] == pytest.approx(2 / 3)
    assert result["balanced_accuracy"] == pytest.approx((3 / 4 + 2 / 3) / 2)
    assert result["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    # a score equal to the threshold counts as positive
    assert metrics_at(labels, scores, 0.55)["sensitivity"] == pytest.approx(3 / 4)


def test_roc_table_has_finite_thresholds_from_corner_to_corner() -> None:
    table = roc_table(PAIR_LABELS, PAIR_SCORES)
    assert list(table.columns) == ["fpr", "tpr", "threshold"]
    assert np.isfinite(table.to_numpy()).all()
    assert (table["fpr"].iloc[0], table["tpr"].iloc[0]) == (0.0, 0.0)
    assert (table["fpr"].iloc[-1], table["tpr"].iloc[-1]) == (1.0, 1.0)
    assert table["threshold"].iloc[0] == 1.0  # scikit-learn's +inf, written as the top of the score range
    assert np.trapezoid(table["tpr"], table["fpr"]) == pytest.approx(0.75)


def test_youden_threshold_maximises_sensitivity_plus_specificity() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, 0.3, 0.5, 0.65, 0.55, 0.6, 0.7, 0.9])
    # at 0.55: all 4 positives found, 1 of 4 negatives (0.65) above -> J = 1 - 1/4, the unique maximum
    assert youden_threshold(labels, scores) == pytest.approx(0.55)


def test_bootstrap_ci_of_perfect_and_inverted_rankings_is_a_point() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    # every resample with both classes ranks perfectly (or perfectly wrong)
    assert bootstrap_auc_ci(labels, scores, 300, 0.95, seed=1) == (1.0, 1.0)
    assert bootstrap_auc_ci(labels, 1 - scores, 300, 0.95, seed=1) == (0.0, 0.0)


def test_bootstrap_ci_contains_the_estimate_and_is_reproducible() -> None:
    rng = np.random.default_rng(3)
    labels = np.repeat([0, 1], 30)
    scores = rng.normal(labels * 1.0, 1.0)
    point = auc(labels, scores)
    low, high = bootstrap_auc_ci(labels, scores, 1000, 0.95, seed=42)
    assert low < point < high
    assert low >= 0.0 and high <= 1.0
    assert bootstrap_auc_ci(labels, scores, 1000, 0.95, seed=42) == (low, high)
    narrow = bootstrap_auc_ci(labels, scores, 1000, 0.5, seed=42)
    assert low <= narrow[0] < narrow[1] <= high


def test_one_class_has_no_auc() -> None:
    with pytest.raises(UserError, match="one class"):
        auc(np.array([1, 1, 1]), np.array([0.2, 0.5, 0.9]))
    with pytest.raises(UserError, match="one class"):
        bootstrap_auc_ci(np.array([0, 0]), np.array([0.2, 0.5]))
