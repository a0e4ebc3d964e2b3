"""Statistics for comparing arms: confidence intervals across seeds, a paired bootstrap of the
AUC difference on one test set, and DeLong's test for two correlated ROC AUCs.

Conventions: `probs` are [seeds, images] arrays of test-set probabilities, both arms scored on
the same images in the same order, row k of each arm trained with the same seed k.
"""

from __future__ import annotations

import math

import numpy as np


def mean_ci(values, level: float = 0.95) -> tuple[float, float, float]:
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


def weighted_auc(scores, labels, weights) -> np.ndarray:
    """ROC AUC of `scores` under case weights (ties count one half): one AUC per row of
    `weights` ([B, N] or [N]). With integer weights = bootstrap counts, this is the AUC of the
    resampled set, computed without materialising it."""
    s, y = np.asarray(scores, float), np.asarray(labels).astype(bool)
    w = np.atleast_2d(np.asarray(weights, float))
    uniq, inv = np.unique(s, return_inverse=True)           # tie groups, ascending
    k = len(uniq)
    neg = np.zeros((w.shape[0], k))
    pos = np.zeros((w.shape[0], k))
    np.add.at(neg.T, inv[~y], w[:, ~y].T)
    np.add.at(pos.T, inv[y], w[:, y].T)
    neg_below = np.cumsum(neg, axis=1) - neg                  # negatives with a strictly lower score
    num = (pos * (neg_below + 0.5 * neg)).sum(axis=1)
    den = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den


def stratified_counts(labels, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """[n_boot, N] bootstrap counts that resample positives and negatives separately, so every
    replicate keeps the test set's class sizes (its AUC is always defined)."""
    y = np.asarray(labels).astype(bool)
    counts = np.zeros((n_boot, len(y)))
    for cls in (False, True):
        idx = np.flatnonzero(y == cls)
        draws = rng.integers(0, len(idx), size=(n_boot, len(idx)))
        np.add.at(counts, (np.arange(n_boot)[:, None], idx[draws]), 1)
    return counts


def paired_bootstrap_auc(probs_a, probs_b, labels, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Paired bootstrap of mean-over-seeds AUC(a) − AUC(b) on one test set.

    Each replicate resamples the test images (stratified by class; the same images for both arms)
    and, explicitly, the seeds (pairs of same-seed runs, with replacement), so the interval carries
    both the test-set sampling error and the run-to-run variation. Returns the observed difference,
    the percentile CI and a two-sided p-value (the bootstrap distribution's mass on the far side of 0,
    doubled, with the +1 correction)."""
    a, b = np.atleast_2d(np.asarray(probs_a, float)), np.atleast_2d(np.asarray(probs_b, float))
    if a.shape != b.shape:
        raise ValueError(f"paired arms need the same seeds × images, got {a.shape} and {b.shape}")
    rng = np.random.default_rng(seed)
    k = a.shape[0]
    counts = stratified_counts(labels, n_boot, rng)
    auc_a = np.stack([weighted_auc(a[s], labels, counts) for s in range(k)], axis=1)   # [B, k]
    auc_b = np.stack([weighted_auc(b[s], labels, counts) for s in range(k)], axis=1)
    seed_draw = rng.integers(0, k, size=(n_boot, k)) if k > 1 else np.zeros((n_boot, 1), int)
    diff = np.take_along_axis(auc_a - auc_b, seed_draw, axis=1).mean(axis=1)
    ones = np.ones(len(labels))
    observed = float(np.mean([weighted_auc(a[s], labels, ones)[0] - weighted_auc(b[s], labels, ones)[0]
                              for s in range(k)]))
    lo, hi = np.quantile(diff, [(1 - level) / 2, (1 + level) / 2])
    if np.all(diff == 0):
        p = 1.0
    else:
        p = min(1.0, 2 * min((np.sum(diff <= 0) + 1) / (n_boot + 1), (np.sum(diff >= 0) + 1) / (n_boot + 1)))
    return dict(diff=observed, ci_low=float(lo), ci_high=float(hi), p=float(p), n_boot=n_boot, n_seeds=k)


def _midranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    ranks = np.empty(len(x))
    i = 0
    while i < len(x):
        j = i
        while j < len(x) and xs[j] == xs[i]:
            j += 1
        ranks[i:j] = 0.5 * (i + j - 1) + 1
        i = j
    out = np.empty(len(x))
    out[order] = ranks
    return out


def delong(scores_a, scores_b, labels) -> dict:
    """DeLong's test (DeLong, DeLong & Clarke-Pearson 1988) of two correlated ROC AUCs on the same
    cases, with the fast mid-rank computation of Sun & Xu (2014). Returns both AUCs, their
    difference, its standard error, z and the two-sided p-value."""
    y = np.asarray(labels).astype(bool)
    m, n = int(y.sum()), int((~y).sum())
    if m == 0 or n == 0:
        raise ValueError("DeLong's test needs both classes")
    aucs, v10, v01 = [], [], []
    for s in (np.asarray(scores_a, float), np.asarray(scores_b, float)):
        x, yy = s[y], s[~y]
        tx, ty, tz = _midranks(x), _midranks(yy), _midranks(np.concatenate([x, yy]))
        aucs.append((tz[:m].sum() - m * (m + 1) / 2) / (m * n))
        v10.append((tz[:m] - tx) / n)             # per-positive structural components
        v01.append(1.0 - (tz[m:] - ty) / m)       # per-negative structural components
    s10, s01 = np.cov(np.stack(v10)), np.cov(np.stack(v01))
    cov = s10 / m + s01 / n
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    diff = aucs[0] - aucs[1]
    if var <= 0:
        z, p = (0.0, 1.0) if diff == 0 else (math.copysign(math.inf, diff), 0.0)
    else:
        z = diff / math.sqrt(var)
        p = math.erfc(abs(z) / math.sqrt(2))
    return dict(auc_a=float(aucs[0]), auc_b=float(aucs[1]), diff=float(diff), se=float(math.sqrt(max(var, 0.0))),
                z=float(z), p=float(p))
