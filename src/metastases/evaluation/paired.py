"""Is a change in AUC real? Paired tests of two sets of scores for the same patients.

Two models (or two revisions of one) scored the same patients, so their AUCs are correlated and the
uncertainty of their difference is much smaller than that of either AUC alone. :func:`delong_paired_test`
is DeLong's test for two correlated ROC curves (DeLong, DeLong & Clarke-Pearson, Biometrics 1988),
computed with the midrank algorithm of Sun & Xu (IEEE Signal Processing Letters 2014);
:func:`paired_bootstrap` is the stratified paired bootstrap alternative (as ``pROC::roc.test(method =
"bootstrap")``). Pure functions on numpy arrays; label 1 is positive, higher scores mean positive.

DeLong's statistic: for positive ``i`` and negative ``j`` let ``psi = 1`` if the positive scores higher,
``1/2`` on a tie, ``0`` otherwise. The structural components (placement values) are
``V10[i] = mean_j psi(X_i, Y_j)`` and ``V01[j] = mean_i psi(X_i, Y_j)``; the AUC is the mean of
either. With ``m`` positives and ``n`` negatives the covariance of the AUCs of models ``r, s`` is
``S10[r, s] / m + S01[r, s] / n`` where ``S10``, ``S01`` are sample covariances (``ddof=1``) of the
components. The difference ``AUC_b - AUC_a`` has variance ``S[a,a] + S[b,b] - 2 S[a,b]``; its ``z``
is compared with the standard normal.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm, rankdata

from metastases.errors import UserError

VARIANCE_FLOOR = 1e-24
"""Variances at or below this are rounding noise of an exact zero (e.g. identical rankings)."""

DELTA_FLOOR = 1e-12
"""AUC differences at or below this are rounding noise of an exact zero."""


@dataclass(frozen=True)
class PairedAucTest:
    """AUCs of scores ``a`` and ``b`` on the same patients and their difference ``b - a``.

    ``ci_low``/``ci_high`` is the two-sided interval of ``delta`` at ``confidence``; ``p_value`` the
    two-sided p-value of "no difference". ``note`` explains a degenerate estimate (empty if none).
    """

    auc_a: float
    auc_b: float
    delta: float
    se: float
    z: float
    ci_low: float
    ci_high: float
    p_value: float
    positives: int
    negatives: int
    confidence: float = 0.95
    method: str = "DeLong"
    note: str = ""

    @property
    def significant(self) -> bool:
        """Whether the interval excludes 0 (equivalently ``p_value < 1 - confidence``)."""
        return not (self.ci_low <= 0.0 <= self.ci_high)

    @property
    def verdict(self) -> str:
        """``"better"``/``"worse"`` (``b`` relative to ``a``) if the interval excludes 0, else
        ``"within noise"``."""
        if not self.significant:
            return "within noise"
        return "better" if self.delta > 0 else "worse"


def _labels_and_scores(labels: np.ndarray, *scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``labels`` as booleans and ``scores`` stacked to ``(models, patients)``; checked."""
    y = np.asarray(labels)
    rows = [np.asarray(s, dtype=float) for s in scores]
    for row in rows:
        if y.ndim != 1 or row.shape != y.shape:
            raise ValueError(f"labels {y.shape} and scores {row.shape} must be 1-D and of equal length")
    matrix = np.vstack(rows)
    values = set(np.unique(y).tolist())
    if not values <= {0, 1}:
        raise ValueError(f"labels must be 0 or 1, got {sorted(values)}")
    if not np.all(np.isfinite(matrix)):
        raise UserError("scores contain NaN or infinite values: the predictions file is broken")
    positives = int((y == 1).sum())
    negatives = int((y == 0).sum())
    if positives < 2 or negatives < 2:
        raise UserError(
            "DeLong's test needs at least 2 positive and 2 negative patients, "
            f"got {positives} and {negatives}"
        )
    return y == 1, matrix


def structural_components(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's placement values ``(V10, V01)`` of each row of ``scores`` (shape ``(models, patients)``).

    ``V10`` has shape ``(models, positives)``, ``V01`` ``(models, negatives)``, positives and negatives
    in input order. Computed from midranks (Sun & Xu 2014) in ``O(N log N)``: the rank of a positive
    among all patients minus its rank among positives counts the negatives below it (ties one half).
    """
    positive, matrix = _labels_and_scores(labels, *np.atleast_2d(scores))
    m = int(positive.sum())
    n = positive.size - m
    x, y = matrix[:, positive], matrix[:, ~positive]
    ranks_all = rankdata(matrix, axis=1)  # midranks: ties share the mean rank
    ranks_x = rankdata(x, axis=1)
    ranks_y = rankdata(y, axis=1)
    v10 = (ranks_all[:, positive] - ranks_x) / n
    v01 = 1.0 - (ranks_all[:, ~positive] - ranks_y) / m
    return v10, v01


def delong_covariance(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of each row of ``scores`` (shape ``(models, patients)``) and DeLong's covariance matrix of
    them, ``S10 / m + S01 / n``."""
    v10, v01 = structural_components(labels, scores)
    aucs = v10.mean(axis=1)
    m, n = v10.shape[1], v01.shape[1]
    covariance = np.atleast_2d(np.cov(v10, ddof=1)) / m + np.atleast_2d(np.cov(v01, ddof=1)) / n
    return aucs, covariance


def delong_roc_variance(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """AUC of one set of scores and DeLong's estimate of its variance."""
    aucs, covariance = delong_covariance(labels, np.asarray(scores, dtype=float)[np.newaxis, :])
    return float(aucs[0]), float(covariance[0, 0])


def _interval(delta: float, se: float, confidence: float) -> tuple[float, float]:
    half = float(norm.ppf(0.5 + confidence / 2.0)) * se
    return delta - half, delta + half


def delong_paired_test(
    labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, confidence: float = 0.95
) -> PairedAucTest:
    """DeLong's test of ``AUC(scores_b) - AUC(scores_a)`` on the same patients.

    A zero variance (identical rankings, or both models constant within each class) has no normal
    approximation: a zero difference then gets ``p = 1`` and the interval ``[0, 0]``; a non-zero one
    ``p = 0`` with the interval collapsed on it and a ``note`` saying so. Fewer than 2 patients of a
    class raise :class:`UserError`.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    _, matrix = _labels_and_scores(labels, scores_a, scores_b)
    v10, v01 = structural_components(labels, matrix)
    m, n = v10.shape[1], v01.shape[1]
    auc_a, auc_b = (float(v) for v in v10.mean(axis=1))
    # Var(b - a) = S[a,a] + S[b,b] - 2 S[a,b] = Var(V10_b - V10_a) / m + Var(V01_b - V01_a) / n;
    # the second form is exactly 0 when the two rankings are the same.
    variance = float(np.var(v10[1] - v10[0], ddof=1) / m + np.var(v01[1] - v01[0], ddof=1) / n)
    delta = auc_b - auc_a
    if abs(delta) <= DELTA_FLOOR:
        delta = 0.0
    degenerate = "variance estimate 0 (degenerate scores): the interval and p-value are not informative"
    se = float(np.sqrt(variance)) if variance > VARIANCE_FLOOR else 0.0
    z, p_value, note = _z_test(delta, se, degenerate)
    low, high = _interval(delta, se, confidence)
    result = PairedAucTest(auc_a, auc_b, delta, se, z, low, high, p_value, m, n, confidence)
    return dataclasses.replace(result, method="DeLong", note=note)


def _z_test(delta: float, se: float, degenerate: str) -> tuple[float, float, str]:
    """``z``, its two-sided p-value and a note; with ``se`` 0 (degenerate scores) ``p`` is 1 for no
    difference and 0 for any other, and the note (``degenerate``) says that it is not informative."""
    if se > 0.0:
        z = delta / se
        return z, float(2.0 * norm.sf(abs(z))), ""
    if delta == 0.0:
        return 0.0, 1.0, ""
    return float(np.sign(delta) * np.inf), 0.0, degenerate


def _auc_of_rows(positive_scores: np.ndarray, negative_scores: np.ndarray) -> np.ndarray:
    """AUC of each row by the Mann-Whitney rank statistic (ties count one half)."""
    m, n = positive_scores.shape[-1], negative_scores.shape[-1]
    ranks = rankdata(np.concatenate([positive_scores, negative_scores], axis=-1), axis=-1)
    return (ranks[..., :m].sum(axis=-1) - m * (m + 1) / 2.0) / (m * n)


def paired_bootstrap(
    labels: np.ndarray,
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    *,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedAucTest:
    """Paired bootstrap of ``AUC(scores_b) - AUC(scores_a)``: the same resampled patients for both.

    Resampling is stratified (positives and negatives separately, as ``pROC``), so every resample has
    both classes. The interval is the percentile interval of the resampled differences; the p-value
    that of ``z = delta / sd(resampled differences)`` (``pROC::roc.test(method = "bootstrap")``). The
    same seed gives the same result.

    Args:
        labels: 0/1 per patient.
        scores_a: scores of the reference (base) model per patient.
        scores_b: scores of the compared (head) model, same patients in the same order.
        resamples: number of bootstrap resamples.
        confidence: coverage of the two-sided interval.
        seed: seed of the resampling.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if resamples < 2:
        raise ValueError(f"resamples must be at least 2, got {resamples}")
    positive, matrix = _labels_and_scores(labels, scores_a, scores_b)
    x, y = matrix[:, positive], matrix[:, ~positive]
    m, n = x.shape[1], y.shape[1]
    auc_a, auc_b = (float(v) for v in _auc_of_rows(x, y))
    delta = auc_b - auc_a
    if abs(delta) <= DELTA_FLOOR:
        delta = 0.0
    rng = np.random.default_rng(seed)
    pick_x = rng.integers(0, m, size=(resamples, m))
    pick_y = rng.integers(0, n, size=(resamples, n))
    # (models, resamples, patients): both models see the same resampled patients
    boot = _auc_of_rows(x[:, pick_x], y[:, pick_y])
    deltas = boot[1] - boot[0]
    tail = (1.0 - confidence) / 2.0
    low, high = (float(v) for v in np.quantile(deltas, [tail, 1.0 - tail]))
    sd = float(np.std(deltas, ddof=1))
    sd = sd if sd > np.sqrt(VARIANCE_FLOOR) else 0.0
    degenerate = "bootstrap differences all equal (degenerate scores): the p-value is not informative"
    z, p_value, note = _z_test(delta, sd, degenerate)
    result = PairedAucTest(auc_a, auc_b, delta, sd, z, low, high, p_value, m, n, confidence)
    return dataclasses.replace(result, method="paired bootstrap", note=note)
