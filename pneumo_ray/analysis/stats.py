"""Statistics for comparing arms: confidence intervals across seeds, weighted (bootstrap) AUCs of
one test set, DeLong's test for two correlated ROC AUCs, and the primary
two-level test (`auc_diff_two_level`, `auc_two_level`) whose variance counts both training
randomness (seeds) and test-image sampling, with Holm's adjustment across comparisons.
Single-level tests are miscalibrated here: bench/verdict_calibration.py measures them.

Conventions: `probs` are [seeds, images] arrays of test-set probabilities, both arms scored on
the same images in the same order, row k of each arm trained with the same seed k.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike


def mean_ci(values: ArrayLike, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): Student-t interval of the mean across independent runs (seeds).
    With one value the interval is undefined (nan, nan)."""
    from scipy import stats

    v = np.asarray(values, float)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return math.nan, math.nan, math.nan
    m = float(v.mean())
    if len(v) < 2:
        return m, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return m, m - half, m + half


def weighted_auc(scores: ArrayLike, labels: ArrayLike, weights: ArrayLike) -> np.ndarray:
    """ROC AUC of `scores` under case weights (ties count one half): one AUC per row of
    `weights` ([B, N] or [N]). With integer weights = bootstrap counts, this is the AUC of the
    resampled set, computed without materialising it."""
    s, y = np.asarray(scores, float), np.asarray(labels).astype(bool)
    w = np.atleast_2d(np.asarray(weights, float))
    uniq, inv = np.unique(s, return_inverse=True)  # tie groups, ascending
    k = len(uniq)
    neg = np.zeros((w.shape[0], k))
    pos = np.zeros((w.shape[0], k))
    np.add.at(neg.T, inv[~y], w[:, ~y].T)
    np.add.at(pos.T, inv[y], w[:, y].T)
    neg_below = np.cumsum(neg, axis=1) - neg  # negatives with a strictly lower score
    num = (pos * (neg_below + 0.5 * neg)).sum(axis=1)
    den = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den


def stratified_counts(labels: ArrayLike, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """[n_boot, N] bootstrap counts that resample positives and negatives separately, so every
    replicate keeps the test set's class sizes (its AUC is always defined)."""
    y = np.asarray(labels).astype(bool)
    counts = np.zeros((n_boot, len(y)))
    for cls in (False, True):
        idx = np.flatnonzero(y == cls)
        draws = rng.integers(0, len(idx), size=(n_boot, len(idx)))
        np.add.at(counts, (np.arange(n_boot)[:, None], idx[draws]), 1)
    return counts


def structural_components(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DeLong's structural components of the ROC AUC, for every row of `scores` ([..., N]) at once.

    Returns (auc [...], v10 [..., positives], v01 [..., negatives]): v10 of a positive is the share of
    negatives it outscores, v01 of a negative the share of positives that outscore it (ties count one
    half); auc = mean(v10) = mean(v01). Mid-ranks (Sun & Xu 2014) via `scipy.stats.rankdata` along the
    last axis, so a [K, N] matrix of seeds costs three vectorised rankings instead of K Python loops."""
    from scipy.stats import rankdata

    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, float)
    m, n = int(y.sum()), int((~y).sum())
    if m == 0 or n == 0:
        raise ValueError("the ROC AUC needs both classes")
    x, z = s[..., y], s[..., ~y]
    tz = rankdata(np.concatenate([x, z], axis=-1), axis=-1)
    v10 = (tz[..., :m] - rankdata(x, axis=-1)) / n
    v01 = 1.0 - (tz[..., m:] - rankdata(z, axis=-1)) / m
    return v10.mean(axis=-1), v10, v01


def delong_var(v10: np.ndarray, v01: np.ndarray) -> np.ndarray:
    """DeLong's test-sampling variance of the AUC whose structural components are given (last axis)."""
    return v10.var(axis=-1, ddof=1) / v10.shape[-1] + v01.var(axis=-1, ddof=1) / v01.shape[-1]


def delong(scores_a: ArrayLike, scores_b: ArrayLike, labels: ArrayLike) -> dict:
    """DeLong's test (DeLong, DeLong & Clarke-Pearson 1988) of two correlated ROC AUCs on the same
    cases, with the fast mid-rank computation of Sun & Xu (2014). Returns both AUCs, their
    difference, its standard error, z and the two-sided p-value."""
    y = np.asarray(labels).astype(bool)
    if y.all() or not y.any():
        raise ValueError("DeLong's test needs both classes")
    aucs, v10, v01 = structural_components(np.stack([np.asarray(scores_a, float), np.asarray(scores_b, float)]), y)
    var = float(delong_var(v10[0] - v10[1], v01[0] - v01[1]))  # = S_aa + S_bb - 2 S_ab of the 2x2 covariances
    diff = aucs[0] - aucs[1]
    if var <= 0:
        z, p = (0.0, 1.0) if diff == 0 else (math.copysign(math.inf, diff), 0.0)
    else:
        z = diff / math.sqrt(var)
        p = math.erfc(abs(z) / math.sqrt(2))
    return dict(
        auc_a=float(aucs[0]),
        auc_b=float(aucs[1]),
        diff=float(diff),
        se=float(math.sqrt(max(var, 0.0))),
        z=float(z),
        p=float(p),
    )


def _two_level(per_seed: np.ndarray, v10: np.ndarray, v01: np.ndarray, level: float, subtract_overlap: bool) -> dict:
    """Mean over seeds of `per_seed` AUCs (or paired AUC differences) with a variance that counts both
    training randomness and test-image sampling. v10/v01: [seeds, cases] structural components of the
    per-seed quantity (for a difference, the component-wise differences)."""
    from scipy import stats

    k = len(per_seed)
    est = float(per_seed.mean())
    var_test = float(delong_var(v10.mean(axis=0), v01.mean(axis=0)))  # test sampling of the seed average
    if k < 2:
        var_seed, df = math.nan, math.inf
        var = var_test
    else:
        s2 = float(per_seed.var(ddof=1))
        if subtract_overlap:  # s2 also holds the non-shared part of each seed's test noise: take it out
            s2 = max(s2 - (float(delong_var(v10, v01).mean()) - var_test) * k / (k - 1), 0.0)
        var_seed = s2 / k
        var = var_seed + var_test
        df = var**2 / (var_seed**2 / (k - 1)) if var_seed > 0 else math.inf
    se = math.sqrt(var)
    if se > 0:
        crit = float(stats.t.ppf(0.5 + level / 2, df))
        p = float(2 * stats.t.sf(abs(est) / se, df))
    else:
        crit, p = 0.0, (1.0 if est == 0 else 0.0)
    return dict(
        est=est,
        se=se,
        df=float(df),
        ci_low=est - crit * se,
        ci_high=est + crit * se,
        p=p,
        var_seed=var_seed,
        var_test=var_test,
        n_seeds=k,
    )


def auc_diff_two_level(
    probs_a: ArrayLike, probs_b: ArrayLike, labels: ArrayLike, level: float = 0.95, *, subtract_overlap: bool = False
) -> dict:
    """PRIMARY paired test of mean-over-seeds AUC(a) − AUC(b), counting both sources of variation.

    d_k = AUC(a_k) − AUC(b_k) for the same-seed pair k; Δ = mean(d_k) and
    Var(Δ) = s²_d / K + V_test, where s²_d is the between-seed variance of the paired differences
    (training randomness) and V_test DeLong's test-sampling variance of the difference of the
    seed-averaged AUCs (from the structural components averaged over seeds; the mean of the per-seed
    AUCs is the AUC of those averaged components). Reference: Student t with Welch–Satterthwaite
    df = Var² / ((s²_d/K)² / (K − 1)), V_test counted as known (infinite df). With one seed there is
    no s²_d: the result is DeLong's normal test of that pair, which cannot count run-to-run variation
    (`method` says so).

    Why (bench/verdict_calibration.py: null studies in the real arms' regime, 624 images, per-seed AUC
    0.95 ± 0.01, run-to-run r 0.974; 1000 per K): this test rejects 0.065 / 0.060 / 0.032 at α = 0.05 for
    K = 3 / 5 / 10, DeLong on the seed-averaged probabilities 0.67 / 0.62 / 0.62 (it cannot see that two
    arms' seed averages differ by training noise). When each arm's seeds share a per-image pattern (test
    noise common to every d_k), a seeds-only t-test on d_k rejects 0.09 / 0.11 / 0.21 and this test
    0.066 / 0.040 / 0.026. V_test matches the simulated test-sampling variance of Δ (5.0e-6 vs 4.8e-6, K = 3).

    s²_d also holds the non-shared part of each seed's test noise, which V_test counts again: se² is too
    large by (mean_k V_test,k − V_test)/(K − 1). It is KEPT on purpose. `subtract_overlap=True` removes it
    (σ²_seed = s²_d − (mean_k V_test,k − V_test)·K/(K − 1), truncated at 0) and then rejects 0.094 / 0.082 /
    0.044 of null studies: the plug-in Satterthwaite df is largest exactly when s²_d is small by chance, and
    the double count (≈ 6% of se² in that regime) offsets it. Its power gain is no more than its excess
    false positives (true ΔAUC 0.01: 0.19 vs 0.16, 0.25 vs 0.24, 0.50 vs 0.48 at K = 3 / 5 / 10). A fixed
    df = K − 1 instead is far too conservative (0.014 at K = 3; ≤ 0.01 at K = 3–5 with shared test noise).

    Returns diff, se, df, ci_low, ci_high, p, var_seed (= s²_d/K, the seed term of se²; nan with
    one seed), var_test, n_seeds, n_test and method."""
    a, b = np.atleast_2d(np.asarray(probs_a, float)), np.atleast_2d(np.asarray(probs_b, float))
    if a.shape != b.shape:
        raise ValueError(f"paired arms need the same seeds × images, got {a.shape} and {b.shape}")
    auc_a, v10_a, v01_a = structural_components(a, labels)
    auc_b, v10_b, v01_b = structural_components(b, labels)
    r = _two_level(auc_a - auc_b, v10_a - v10_b, v01_a - v01_b, level, subtract_overlap)
    r["diff"] = r.pop("est")
    r["n_test"] = a.shape[1]
    r["method"] = (
        "two-level t: seeds (paired differences) + DeLong test sampling"
        if r["n_seeds"] > 1
        else "DeLong only (1 seed): run-to-run variation is not counted"
    )
    return r


def auc_two_level(probs: ArrayLike, labels: ArrayLike, level: float = 0.95, *, subtract_overlap: bool = False) -> dict:
    """One arm's mean test AUC over K seeds with an interval for its expected AUC that counts both
    training randomness and test-image sampling: se² = s²_auc / K + DeLong's variance of the
    seed-averaged AUC, Student t with Satterthwaite df (as `auc_diff_two_level`), clipped to [0, 1].
    Returns mean, se, df, ci_low, ci_high, var_seed, var_test, n_seeds."""
    p = np.atleast_2d(np.asarray(probs, float))
    auc, v10, v01 = structural_components(p, labels)
    r = _two_level(auc, v10, v01, level, subtract_overlap)
    r["mean"] = r.pop("est")
    del r["p"]
    r["ci_low"], r["ci_high"] = max(r["ci_low"], 0.0), min(r["ci_high"], 1.0)
    return r


def holm(p_values: ArrayLike) -> np.ndarray:
    """Holm–Bonferroni step-down adjusted p-values, in the order given: the i-th smallest of m is
    multiplied by m − i + 1, then made non-decreasing and capped at 1. NaN stays NaN and is not
    counted in m."""
    p = np.asarray(p_values, float)
    out = np.full(p.shape, math.nan)
    ok = ~np.isnan(p)
    q = p[ok]
    order = np.argsort(q, kind="stable")
    adj = np.minimum(np.maximum.accumulate(q[order] * (len(q) - np.arange(len(q)))), 1.0)
    res = np.empty(len(q))
    res[order] = adj
    out[ok] = res
    return out
