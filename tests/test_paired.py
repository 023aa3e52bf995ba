"""DeLong's paired test and the paired bootstrap of metastases.evaluation.paired.

Expected values are worked out by hand in the comments (fractions, then ``math``), computed by a
literal double loop over (positive, negative) pairs written here, or by the two-sample jackknife of
scikit-learn's AUC (which equals DeLong's estimator), never by the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from metastases.errors import UserError
from metastases.evaluation.paired import (
    delong_covariance,
    delong_paired_test,
    delong_roc_variance,
    paired_bootstrap,
    structural_components,
)

Z975 = 1.959963984540054  # the 97.5 % quantile of the standard normal


def two_sided_p(z: float) -> float:
    """P(|Z| >= |z|) for a standard normal Z, from math.erfc (independent of scipy)."""
    return math.erfc(abs(z) / math.sqrt(2.0))


# A hand example: 3 positives, 3 negatives, interleaved as patients 1..6 (labels 1, 0, 1, 0, 1, 0).
LABELS = np.array([1, 0, 1, 0, 1, 0])
# model A: positives 0.8, 0.6, 0.4; negatives 0.7, 0.3, 0.2
SCORES_A = np.array([0.8, 0.7, 0.6, 0.3, 0.4, 0.2])
# model B: positives 0.9, 0.5, 0.5; negatives 0.5, 0.6, 0.1 (ties at 0.5 count one half)
SCORES_B = np.array([0.9, 0.5, 0.5, 0.6, 0.5, 0.1])

# psi(X_i, Y_j) = 1 if X_i > Y_j, 1/2 if equal, 0 if below.
# V10[i] = mean over negatives j, V01[j] = mean over positives i:
#   A: X=0.8 beats 0.7, 0.3, 0.2 -> 1;   X=0.6 beats 0.3, 0.2 -> 2/3;   X=0.4 beats 0.3, 0.2 -> 2/3
#      Y=0.7 is beaten by 0.8 -> 1/3;    Y=0.3 by all three -> 1;       Y=0.2 by all three -> 1
#   B: X=0.9 beats all -> 1;   X=0.5: tie 0.5 (1/2), loses 0.6, beats 0.1 -> (1/2 + 1) / 3 = 1/2 (twice)
#      Y=0.5: 0.9 (1) + two ties (1/2 + 1/2) -> 2/3;   Y=0.6: only 0.9 -> 1/3;   Y=0.1: all -> 1
V10_A, V01_A = [1, 2 / 3, 2 / 3], [1 / 3, 1, 1]
V10_B, V01_B = [1, 1 / 2, 1 / 2], [2 / 3, 1 / 3, 1]
AUC_A = 7 / 9  # (1 + 2/3 + 2/3) / 3 = (1/3 + 1 + 1) / 3
AUC_B = 2 / 3  # (1 + 1/2 + 1/2) / 3 = (2/3 + 1/3 + 1) / 3
# Sample covariances (divide by k - 1 = 2) of the components, deviations from the means:
#   V10_A - 7/9 = (2/9, -1/9, -1/9)   V10_B - 2/3 = (1/3, -1/6, -1/6)
#   S10_AA = (4 + 1 + 1)/81 / 2 = 1/27;  S10_BB = (1/9 + 1/36 + 1/36) / 2 = 1/12
#   S10_AB = (2/27 + 1/54 + 1/54) / 2 = 1/18
#   V01_A - 7/9 = (-4/9, 2/9, 2/9)    V01_B - 2/3 = (0, -1/3, 1/3)
#   S01_AA = (16 + 4 + 4)/81 / 2 = 4/27; S01_BB = (0 + 1/9 + 1/9) / 2 = 1/9
#   S01_AB = (0 - 2/27 + 2/27) / 2 = 0
# With m = n = 3: S = S10 / 3 + S01 / 3
VAR_A = (1 / 27 + 4 / 27) / 3  # = 5/81
VAR_B = (1 / 12 + 1 / 9) / 3  # = 7/108
COV_AB = (1 / 18 + 0) / 3  # = 1/54
# Var(B - A) = 5/81 + 7/108 - 2/54 = (20 + 21 - 12)/324 = 29/324
VAR_DIFF = 29 / 324
DELTA = AUC_B - AUC_A  # = -1/9
Z = DELTA / math.sqrt(VAR_DIFF)  # = (-1/9) / (sqrt(29)/18) = -2/sqrt(29) = -0.37139...


def _jackknife_covariance(labels: np.ndarray, *scores: np.ndarray) -> np.ndarray:
    """Covariance of the AUCs of ``scores`` by the two-sample jackknife, with sklearn's AUC only.

    Leave out one positive at a time (m pseudo-values) and one negative at a time (n), each sum of
    products weighted (k - 1) / k. For the Mann-Whitney AUC this is exactly DeLong's estimator
    (Arvesen 1969; DeLong, DeLong & Clarke-Pearson 1988, section 2): AUC without positive i is
    (m AUC - V10[i]) / (m - 1), so its deviation from the mean is -(V10[i] - mean) / (m - 1). Nothing of
    the structural components is computed here: an oracle independent of the code under test.
    """
    labels = np.asarray(labels)
    parts = []
    for cls in (1, 0):
        members = np.flatnonzero(labels == cls)
        k = len(members)
        left_out = np.array(
            [[roc_auc_score(np.delete(labels, i), np.delete(s, i)) for s in scores] for i in members]
        )
        deviations = left_out - left_out.mean(axis=0)
        parts.append((k - 1) / k * deviations.T @ deviations)
    return parts[0] + parts[1]


def test_hand_example_agrees_with_the_jackknife_oracle() -> None:
    # the hand-worked fractions, against an estimator computed another way (sklearn AUCs of subsets) ...
    jackknife = _jackknife_covariance(LABELS, SCORES_A, SCORES_B)
    np.testing.assert_allclose(jackknife, [[5 / 81, 1 / 54], [1 / 54, 7 / 108]])
    assert jackknife[0, 0] + jackknife[1, 1] - 2 * jackknife[0, 1] == pytest.approx(29 / 324)
    # ... and the code under test against both
    _, covariance = delong_covariance(LABELS, np.vstack([SCORES_A, SCORES_B]))
    np.testing.assert_allclose(covariance, jackknife)


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_delong_paired_test_equals_the_jackknife_oracle(seed: int) -> None:
    # unbalanced classes, ties within and across the classes, two correlated models
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat([0, 1], [23, 11]))
    a = np.round(rng.normal(loc=0.7 * labels), 1)
    b = np.round(0.6 * a + rng.normal(scale=0.8, size=34) + 0.4 * labels, 1)
    jackknife = _jackknife_covariance(labels, a, b)
    var_diff = jackknife[0, 0] + jackknife[1, 1] - 2 * jackknife[0, 1]
    delta = roc_auc_score(labels, b) - roc_auc_score(labels, a)
    result = delong_paired_test(labels, a, b)
    assert result.delta == pytest.approx(delta)
    assert result.se == pytest.approx(math.sqrt(var_diff))
    assert result.z == pytest.approx(delta / math.sqrt(var_diff))
    assert result.p_value == pytest.approx(two_sided_p(delta / math.sqrt(var_diff)))
    assert (result.ci_low, result.ci_high) == (
        pytest.approx(delta - Z975 * math.sqrt(var_diff)),
        pytest.approx(delta + Z975 * math.sqrt(var_diff)),
    )
    _, covariance = delong_covariance(labels, np.vstack([a, b]))
    np.testing.assert_allclose(covariance, jackknife, rtol=1e-10, atol=1e-15)
    assert delong_roc_variance(labels, a)[1] == pytest.approx(jackknife[0, 0])


def test_structural_components_match_the_hand_example() -> None:
    v10, v01 = structural_components(LABELS, np.vstack([SCORES_A, SCORES_B]))
    np.testing.assert_allclose(v10, [V10_A, V10_B])
    np.testing.assert_allclose(v01, [V01_A, V01_B])


def test_delong_covariance_matches_the_hand_example() -> None:
    aucs, covariance = delong_covariance(LABELS, np.vstack([SCORES_A, SCORES_B]))
    np.testing.assert_allclose(aucs, [AUC_A, AUC_B])
    np.testing.assert_allclose(covariance, [[VAR_A, COV_AB], [COV_AB, VAR_B]])


def test_delong_roc_variance_of_one_curve_matches_the_hand_example() -> None:
    auc, variance = delong_roc_variance(LABELS, SCORES_A)
    assert auc == pytest.approx(AUC_A)
    assert variance == pytest.approx(5 / 81)


def test_delong_paired_test_matches_the_hand_example() -> None:
    result = delong_paired_test(LABELS, SCORES_A, SCORES_B)
    assert (result.auc_a, result.auc_b) == (pytest.approx(7 / 9), pytest.approx(2 / 3))
    assert result.delta == pytest.approx(-1 / 9)
    assert result.se == pytest.approx(math.sqrt(29) / 18)  # 0.29918
    assert result.z == pytest.approx(-2 / math.sqrt(29))  # -0.37139
    assert result.p_value == pytest.approx(two_sided_p(Z))  # 0.71035
    assert result.p_value == pytest.approx(0.71035, abs=1e-5)
    assert result.ci_low == pytest.approx(-1 / 9 - Z975 * math.sqrt(29) / 18)  # -0.69750
    assert result.ci_high == pytest.approx(-1 / 9 + Z975 * math.sqrt(29) / 18)  # +0.47528
    assert (result.positives, result.negatives) == (3, 3)
    assert result.verdict == "within noise" and result.note == ""


def test_swapping_the_two_models_flips_the_difference_only() -> None:
    ab = delong_paired_test(LABELS, SCORES_A, SCORES_B)
    ba = delong_paired_test(LABELS, SCORES_B, SCORES_A)
    assert ba.delta == pytest.approx(-ab.delta) and ba.se == pytest.approx(ab.se)
    assert ba.p_value == pytest.approx(ab.p_value)
    assert (ba.ci_low, ba.ci_high) == (pytest.approx(-ab.ci_high), pytest.approx(-ab.ci_low))


def test_a_clear_improvement_is_better_and_the_reverse_worse() -> None:
    # base: every score 0.5 -> V10 = V01 = 1/2 for all, AUC 1/2, no variance of its own.
    # head: positives 0.9, 0.8, 0.3; negatives 0.4, 0.2, 0.1 -> only the pair (0.3, 0.4) is misordered:
    #   V10 = (1, 1, 2/3), V01 = (2/3, 1, 1), AUC = 8/9, delta = 8/9 - 1/2 = 7/18
    #   V10 diff = (1/2, 1/2, 1/6), deviations from 7/18 = (1/9, 1/9, -2/9): (1 + 1 + 4)/81 / 2 = 1/27;
    #   V01 diff likewise 1/27 -> Var = 1/27/3 + 1/27/3 = 2/81, se = sqrt(2)/9 = 0.15713
    #   z = (7/18) / (sqrt(2)/9) = 7 / (2 sqrt(2)) = 2.47487, p = 0.01333
    labels = np.array([1, 1, 1, 0, 0, 0])
    base = np.full(6, 0.5)
    head = np.array([0.9, 0.8, 0.3, 0.4, 0.2, 0.1])
    better = delong_paired_test(labels, base, head)
    assert better.auc_a == 0.5 and better.auc_b == pytest.approx(8 / 9)
    assert better.delta == pytest.approx(7 / 18)
    assert better.se == pytest.approx(math.sqrt(2) / 9)
    assert better.z == pytest.approx(7 / (2 * math.sqrt(2)))
    assert better.p_value == pytest.approx(two_sided_p(7 / (2 * math.sqrt(2))))
    assert better.p_value == pytest.approx(0.013328, abs=1e-6)
    assert better.ci_low == pytest.approx(7 / 18 - Z975 * math.sqrt(2) / 9)  # 0.08092 > 0
    assert better.verdict == "better"
    worse = delong_paired_test(labels, head, base)
    assert worse.verdict == "worse" and worse.ci_high == pytest.approx(-(7 / 18 - Z975 * math.sqrt(2) / 9))


def _delong_by_definition(labels: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """AUC_a, AUC_b and Var(AUC_b - AUC_a) by DeLong's 1988 definitions: a double loop over pairs."""
    pos = [i for i, y in enumerate(labels) if y == 1]
    neg = [j for j, y in enumerate(labels) if y == 0]

    def psi(x: float, y: float) -> float:
        return 1.0 if x > y else 0.5 if x == y else 0.0

    def components(s: np.ndarray) -> tuple[list[float], list[float]]:
        v10 = [sum(psi(s[i], s[j]) for j in neg) / len(neg) for i in pos]
        v01 = [sum(psi(s[i], s[j]) for i in pos) / len(pos) for j in neg]
        return v10, v01

    def cov(u: list[float], v: list[float]) -> float:
        mu, mv = sum(u) / len(u), sum(v) / len(v)
        return sum((x - mu) * (y - mv) for x, y in zip(u, v, strict=True)) / (len(u) - 1)

    a10, a01 = components(a)
    b10, b01 = components(b)
    m, n = len(pos), len(neg)
    var = (cov(a10, a10) + cov(b10, b10) - 2 * cov(a10, b10)) / m + (
        cov(a01, a01) + cov(b01, b01) - 2 * cov(a01, b01)
    ) / n
    return sum(a10) / m, sum(b10) / m, var


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_delong_matches_the_double_loop_definition_on_tied_random_scores(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat([0, 1], [17, 13]))
    a = np.round(rng.random(30) + 0.3 * labels, 1)  # rounded: many ties
    b = np.round(0.5 * a + 0.5 * rng.random(30) + 0.2 * labels, 1)
    auc_a, auc_b, var = _delong_by_definition(labels, a, b)
    result = delong_paired_test(labels, a, b)
    assert result.auc_a == pytest.approx(auc_a) and result.auc_b == pytest.approx(auc_b)
    assert result.auc_a == pytest.approx(roc_auc_score(labels, a))
    assert result.se == pytest.approx(math.sqrt(var))
    assert result.p_value == pytest.approx(two_sided_p((auc_b - auc_a) / math.sqrt(var)))


def test_single_curve_variance_is_the_placement_value_variance() -> None:
    # For one ROC curve DeLong's variance is Var(V10)/m + Var(V01)/n of the placement values:
    # V10[i] = fraction of negatives below positive i, V01[j] = fraction of positives above negative j.
    rng = np.random.default_rng(7)
    labels = np.repeat([1, 0], [9, 14])
    scores = np.round(rng.normal(loc=labels, scale=1.0), 1)
    x, y = scores[labels == 1], scores[labels == 0]
    v10 = np.array([((xi > y).sum() + 0.5 * (xi == y).sum()) / len(y) for xi in x])
    v01 = np.array([((x > yj).sum() + 0.5 * (x == yj).sum()) / len(x) for yj in y])
    expected = v10.var(ddof=1) / len(x) + v01.var(ddof=1) / len(y)
    auc, variance = delong_roc_variance(labels, scores)
    assert auc == pytest.approx(v10.mean()) and auc == pytest.approx(roc_auc_score(labels, scores))
    assert variance == pytest.approx(expected)


def test_identical_scores_give_delta_zero_and_p_one() -> None:
    result = delong_paired_test(LABELS, SCORES_A, SCORES_A.copy())
    assert (result.delta, result.se, result.p_value) == (0.0, 0.0, 1.0)
    assert (result.ci_low, result.ci_high) == (0.0, 0.0)
    assert result.verdict == "within noise" and not np.isnan(result.z)


def test_same_ranking_on_another_scale_is_no_change() -> None:
    # a monotone transform changes no rank: identical components, exactly no difference
    result = delong_paired_test(LABELS, SCORES_A, 10 * SCORES_A**2 + 1)
    assert (result.delta, result.p_value, result.verdict) == (0.0, 1.0, "within noise")


def test_constant_scores_on_both_sides_are_no_change() -> None:
    result = delong_paired_test(LABELS, np.full(6, 0.3), np.full(6, 0.7))
    assert (result.auc_a, result.auc_b, result.delta, result.p_value) == (0.5, 0.5, 0.0, 1.0)


def test_zero_variance_with_a_difference_is_flagged_not_nan() -> None:
    # perfect vs constant: every component is 1 resp. 1/2, so the variance estimate is 0
    labels = np.array([1, 1, 0, 0])
    result = delong_paired_test(labels, np.full(4, 0.5), np.array([0.9, 0.8, 0.2, 0.1]))
    assert result.delta == 0.5 and result.p_value == 0.0 and result.se == 0.0
    assert result.verdict == "better" and "variance estimate 0" in result.note
    assert not any(math.isnan(v) for v in (result.z, result.ci_low, result.ci_high))


@pytest.mark.parametrize(
    "labels", [np.ones(6, dtype=int), np.zeros(6, dtype=int), np.array([1, 0, 0, 0, 0, 0])]
)
def test_one_class_or_a_single_patient_of_a_class_is_a_clear_error(labels: np.ndarray) -> None:
    with pytest.raises(UserError, match="at least 2 positive and 2 negative"):
        delong_paired_test(labels, SCORES_A, SCORES_B)


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="equal length"):
        delong_paired_test(LABELS, SCORES_A[:5], SCORES_B)
    with pytest.raises(ValueError, match="0 or 1"):
        delong_paired_test(LABELS * 2, SCORES_A, SCORES_B)
    with pytest.raises(UserError, match="NaN"):
        delong_paired_test(LABELS, np.where(LABELS == 1, np.nan, 0.1), SCORES_B)


# --- paired bootstrap -----------------------------------------------------------------------------------


def test_paired_bootstrap_is_seeded_and_agrees_with_delong_on_a_moderate_sample() -> None:
    rng = np.random.default_rng(3)
    labels = np.repeat([1, 0], [40, 40])
    a = rng.normal(loc=0.8 * labels)
    b = a + rng.normal(scale=0.7, size=80) + 0.5 * labels  # correlated with a, better on average
    one = paired_bootstrap(labels, a, b, resamples=1000, seed=5)
    two = paired_bootstrap(labels, a, b, resamples=1000, seed=5)
    assert one == two
    assert one.auc_a == pytest.approx(roc_auc_score(labels, a)) and one.auc_b == pytest.approx(
        roc_auc_score(labels, b)
    )
    delong = delong_paired_test(labels, a, b)
    assert one.delta == pytest.approx(delong.delta)
    assert one.se == pytest.approx(delong.se, rel=0.25)  # two estimates of the same standard error
    assert one.ci_low < one.delta < one.ci_high
    assert one.method == "paired bootstrap"


def test_paired_bootstrap_of_identical_scores_is_no_change() -> None:
    result = paired_bootstrap(LABELS, SCORES_B, SCORES_B, resamples=200)
    assert (result.delta, result.ci_low, result.ci_high, result.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert result.verdict == "within noise"


def test_paired_bootstrap_resamples_within_each_class() -> None:
    # stratified: 2 positives, 2 negatives, every resample still has both classes (no NaN anywhere)
    labels = np.array([1, 0, 1, 0])
    result = paired_bootstrap(labels, np.array([0.9, 0.1, 0.4, 0.6]), np.array([0.8, 0.3, 0.7, 0.2]))
    assert all(np.isfinite([result.ci_low, result.ci_high, result.p_value, result.se]))
    assert -1.0 <= result.ci_low <= result.ci_high <= 1.0
