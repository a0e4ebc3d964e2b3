"""How many seeds a comparison needs: the power of the primary paired test (`stats.auc_diff_two_level`)
from the variance components that a pilot's seeds measure.

The seed-averaged AUC difference of K paired seeds is Δ̂ = mean_k d_k with d_k = Δ + a_k + e_k + c:
a_k training randomness, e_k the part of test-image sampling that seed k's difference does not share
with the other seeds, c the part every seed shares (the same 624 images). So

    Var(Δ̂) = σ²_d / K + V_c,      σ²_d = Var(a_k + e_k) (what s²_d estimates),

and the test divides Δ̂ by se = √(s²_d / K + V_test), where DeLong's V_test of the seed-averaged
components is V_c + V_e / K (V_e = Var(e_k)), with Satterthwaite's df. A pilot of K₀ ≥ 2 seeds gives
σ²_d (s²_d, at least V_e, which it contains), and, from the structural components, V_c + V_e
(DeLong per seed, averaged) and V_c + V_e / K₀ (DeLong of the seed average): two equations for V_c
and V_e. The power at K seeds
and true difference Δ is then an average over s²_d ~ σ²_d χ²_{K−1} / (K − 1) (independent of Δ̂
for normal d_k) of P(Δ̂ > t_{df} · se), a significant result with the right sign, as
bench/verdict_calibration.py counts it; V_test is taken as known, as the test takes it.

One arm alone measures its own seeds, not a difference: `one_arm_components` assumes the other arm's
seeds vary as this arm's, a same-seed pair of runs of the two arms correlates `pair_correlation`
(default 0: pairing helps nothing), and no per-image pattern is shared by one arm's seeds and not
the other's (V_c = 0); each assumption is stated in `Components.assumed`.

bench/seed_planning.py checks these powers against simulated studies in the real data's regime.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import ArrayLike

from pneumo_ray.analysis.stats import delong_var, structural_components

ALPHA = 0.05
TARGET = 0.8
K_MAX = 1000  # the most seeds a plan looks at
_NODES = 2000  # quantiles of the χ² of s²_d the power is averaged over


@dataclass(frozen=True)
class Components:
    """The variance components of a seed-averaged AUC difference (see the module docstring)."""

    seed: float  # σ²_d: variance across seeds of one seed's paired AUC difference (one test set)
    test_shared: float  # V_c: test-image sampling variance every seed's difference shares
    test_per_seed: float  # V_e: test-image sampling variance of one seed's difference the others do not share
    n_seeds: int  # seeds the estimates come from
    n_test: int  # test images
    assumed: str = ""  # what one arm cannot measure and was assumed ("" when measured on paired arms)

    def var_test(self, k: int) -> float:
        """DeLong's V_test of the seed-averaged components of K seeds."""
        return self.test_shared + self.test_per_seed / k

    def var_diff(self, k: int) -> float:
        """The true variance of the seed-averaged difference of K seeds."""
        return self.seed / k + self.test_shared


def _test_parts(v10: np.ndarray, v01: np.ndarray) -> tuple[float, float]:
    """(V_c, V_e) from [K₀, cases] structural components: DeLong per seed, averaged, is V_c + V_e;
    DeLong of the seed average is V_c + V_e / K₀. V_c is truncated at 0."""
    k = v10.shape[0]
    per_seed = float(delong_var(v10, v01).mean())
    averaged = float(delong_var(v10.mean(axis=0), v01.mean(axis=0)))
    v_e = (per_seed - averaged) * k / (k - 1)
    return max(averaged - v_e / k, 0.0), v_e


def _seed_var(aucs: np.ndarray, per_seed_test: float) -> float:
    """σ²_d from the seeds' AUCs (or paired differences): s², but never below V_e, the part of it that
    test-image sampling alone puts there (2 or 3 seeds that happen to agree would promise every
    difference at any K)."""
    return max(float(np.var(aucs, ddof=1)), per_seed_test)


def paired_components(probs_a: ArrayLike, probs_b: ArrayLike, labels: ArrayLike) -> Components:
    """Components of arm a − arm b from K₀ ≥ 2 paired seeds ([seeds, images] probabilities, row k of
    each arm trained with seed k, the images in one order)."""
    a, b = np.atleast_2d(np.asarray(probs_a, float)), np.atleast_2d(np.asarray(probs_b, float))
    if a.shape != b.shape:
        raise ValueError(f"paired arms need the same seeds × images, got {a.shape} and {b.shape}")
    if a.shape[0] < 2:
        raise ValueError("the seed-to-seed variance needs at least 2 paired seeds")
    auc_a, v10_a, v01_a = structural_components(a, labels)
    auc_b, v10_b, v01_b = structural_components(b, labels)
    shared, per_seed = _test_parts(v10_a - v10_b, v01_a - v01_b)
    return Components(_seed_var(auc_a - auc_b, per_seed), shared, per_seed, a.shape[0], a.shape[1])


def one_arm_components(probs: ArrayLike, labels: ArrayLike, pair_correlation: float = 0.0) -> Components:
    """Components of a difference between this arm and another, from this arm's K₀ ≥ 2 seeds alone:
    σ²_d = 2 (1 − r) s²_AUC and V_e = 2 (1 − r) V_e(arm), r = `pair_correlation`; V_c = 0."""
    p = np.atleast_2d(np.asarray(probs, float))
    if p.shape[0] < 2:
        raise ValueError("the seed-to-seed variance needs at least 2 seeds")
    if not -1.0 < pair_correlation < 1.0:
        raise ValueError(f"pair_correlation must be in (-1, 1), got {pair_correlation}")
    auc, v10, v01 = structural_components(p, labels)
    _, per_seed = _test_parts(v10, v01)
    scale = 2.0 * (1.0 - pair_correlation)
    seed = scale * _seed_var(auc, per_seed)
    assumed = (
        f"one arm only: the seed-to-seed variance of a paired difference is taken as 2 × (1 − r) × this arm's "
        f"seed variance of the AUC, with r = {pair_correlation:g} the correlation of two arms' AUCs at the same "
        f"seed ({'no pairing benefit' if pair_correlation == 0 else 'as given'}); the other arm's seeds vary as "
        "this arm's; no test-image pattern shared by one arm's seeds and not the other's (V_c = 0)"
    )
    return Components(seed, 0.0, scale * per_seed, p.shape[0], p.shape[1], assumed)


def power(c: Components, delta: float, k: int, alpha: float = ALPHA) -> float:
    """P(the primary test at K seeds is significant with the sign of Δ) when the true difference is Δ."""
    from scipy import stats

    if k < 2:
        raise ValueError("the primary test needs at least 2 seeds")
    sd = math.sqrt(c.var_diff(k))
    v_t = c.var_test(k)
    q = stats.chi2.ppf((np.arange(_NODES) + 0.5) / _NODES, k - 1) / (k - 1)  # s²_d / σ²_d
    v_s = c.seed * q / k
    se = np.sqrt(v_s + v_t)
    with np.errstate(divide="ignore"):
        df = np.where(v_s > 0, (v_s + v_t) ** 2 / (v_s**2 / (k - 1)), np.inf)
    crit = stats.t.ppf(1 - alpha / 2, df)
    if sd == 0:
        return float(np.mean(abs(delta) > crit * se))
    return float(np.mean(stats.norm.cdf((abs(delta) - crit * se) / sd)))


def power_limit(c: Components, delta: float, alpha: float = ALPHA) -> float:
    """The power as K grows without bound: only the shared test-image variance V_c is left."""
    from scipy import stats

    if c.test_shared == 0:
        return 1.0
    z = stats.norm.ppf(1 - alpha / 2)
    return float(stats.norm.cdf(abs(delta) / math.sqrt(c.test_shared) - z))


def seeds_needed(
    c: Components, delta: float, target: float = TARGET, alpha: float = ALPHA, k_max: int = K_MAX
) -> int | None:
    """The fewest seeds K ≥ 2 whose power reaches `target` at Δ; None when no K ≤ k_max does (the
    shared test-image variance caps the power: `power_limit`)."""
    if power_limit(c, delta, alpha) < target:
        return None
    lo, hi = 2, 2
    while power(c, delta, hi, alpha) < target:  # double, then bisect: power rises with K
        if hi >= k_max:
            return None
        lo, hi = hi + 1, min(2 * hi, k_max)
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if power(c, delta, mid, alpha) < target else (lo, mid)
    return hi


def seed_var_upper(c: Components, level: float = 0.8) -> Components:
    """The components with σ²_d at the upper end of its one-sided `level` interval from n_seeds − 1
    degrees of freedom (a pilot of 3 seeds knows σ²_d only to within a factor of 4.5 at 80 %)."""
    from scipy import stats

    df = c.n_seeds - 1
    return replace(c, seed=c.seed * df / float(stats.chi2.ppf(1 - level, df)))
