"""Binary classification metrics on patient scores (probability of metastases; label 1 positive).

Thin, tested wrappers around scikit-learn: metrics at a threshold, a ROC table with finite thresholds,
a percentile-bootstrap confidence interval of the AUC, and Youden's threshold.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.metrics import (
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    roc_auc_score,
    roc_curve,
)

from metastases.errors import UserError


def _arrays(labels: np.ndarray | pd.Series, scores: np.ndarray | pd.Series) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=int)
    s = np.asarray(scores, dtype=float)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(f"labels {y.shape} and scores {s.shape} must be 1-D and of equal length")
    return y, s


def auc(labels: np.ndarray | pd.Series, scores: np.ndarray | pd.Series) -> float:
    y, s = _arrays(labels, scores)
    if len(set(y.tolist())) < 2:
        raise UserError("AUC is undefined for patients of one class only; the split needs both classes")
    return float(roc_auc_score(y, s))


def metrics_at(
    labels: np.ndarray | pd.Series, scores: np.ndarray | pd.Series, threshold: float
) -> dict[str, float]:
    """Accuracy, balanced accuracy, sensitivity, specificity, F1; ``score >= threshold`` is positive."""
    y, s = _arrays(labels, scores)
    predicted = (s >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, predicted, labels=[0, 1]).ravel()
    return {
        "accuracy": float((tp + tn) / len(y)),
        "balanced_accuracy": float(balanced_accuracy_score(y, predicted)),
        "sensitivity": float(tp / (tp + fn)) if tp + fn else 0.0,
        "specificity": float(tn / (tn + fp)) if tn + fp else 0.0,
        "f1": float(f1_score(y, predicted, zero_division=0.0)),
    }


def roc_table(labels: np.ndarray | pd.Series, scores: np.ndarray | pd.Series) -> pd.DataFrame:
    """ROC points ``fpr, tpr, threshold``, all finite.

    scikit-learn's first threshold is +inf (nothing predicted positive); it is written as 1.0 for
    probabilities (else the highest score + 1), since strict JSON/CSV readers reject infinities.
    """
    y, s = _arrays(labels, scores)
    fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
    ceiling = 1.0 if s.max() <= 1.0 else float(s.max()) + 1.0
    thresholds = np.where(np.isfinite(thresholds), thresholds, ceiling)
    return pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": thresholds})


def youden_threshold(labels: np.ndarray | pd.Series, scores: np.ndarray | pd.Series) -> float:
    """The score threshold maximising sensitivity + specificity - 1 (ties: the highest threshold)."""
    y, s = _arrays(labels, scores)
    fpr, tpr, thresholds = roc_curve(y, s)
    finite = np.isfinite(thresholds)
    j = (tpr - fpr)[finite]
    return float(thresholds[finite][int(np.argmax(j))])


def bootstrap_auc_ci(
    labels: np.ndarray | pd.Series,
    scores: np.ndarray | pd.Series,
    resamples: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the AUC, resampling patients with replacement.

    Resamples that draw one class only have no AUC and are skipped; the same seed gives the same
    interval. All resamples are scored at once by the rank statistic, equal to scikit-learn's AUC.
    """
    y, s = _arrays(labels, scores)
    auc(y, s)  # one-class input: a clear error rather than an empty interval
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(y), size=(resamples, len(y)))
    values = _auc_rows(y[index], s[index])
    values = values[np.isfinite(values)]  # one-class resamples have no AUC
    tail = (1.0 - ci) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return float(low), float(high)


def _auc_rows(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUC of each row by the Mann-Whitney rank statistic (ties share their mean rank); NaN if one class."""
    ranks = rankdata(scores, axis=1)
    positives = labels.sum(axis=1)
    negatives = labels.shape[1] - positives
    rank_sum = (ranks * labels).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)
