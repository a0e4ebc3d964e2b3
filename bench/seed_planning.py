"""Does the seed plan keep its promise? `study.ablate --plan` computes the power of the primary paired
test (`stats.auc_diff_two_level`) from variance components (`analysis/power.py`); this script simulates
whole ablations, as bench/verdict_calibration.py does, and compares.

Generator: verdict_calibration's (624 test images, 234 NORMAL / 390 PNEUMONIA; per run a class
separation draw h_k, a weight g_k on a feature unrelated to the label, run noise e_k,i; ω a per-image
pattern shared by one arm's seeds), with one addition: `share`, the correlation between the draws
h_k and g_k of the two arms' runs with the same seed, as when the same seed gives both arms the same
initialisation, batch order and augmentation (the per-image run noise e stays each run's own). Three
regimes:

    independent  verdict_calibration's main regime: same-seed runs of the two arms no more alike than
                 any two runs (per-seed AUC SD ≈ 0.01 per arm; σ²_d ≈ 2.3e-4)
    paired       share = 0.97: the paired differences vary as the real arms' do (σ²_d ≈ 1.5e-5, V_c ≈ 0,
                 V_e ≈ 9e-6; measured: 1.0e-5, 0, 7.0e-6 in the 3-seed real pilot of the README, and
                 σ²_d = 1.5e-5 with V_test = 1.6e-6 at 5 seeds in its real-data rerun)
    shared-test  independent, plus ω = 0.5: a per-image pattern common to one arm's seeds (test noise
                 every seed shares: V_c large)

For each regime and true ΔAUC (arm a's μ raised until the expected population AUC differs by ΔAUC):
the components that pilots measure at that truth (`power.paired_components`, averaged over many
pilots of 20 seeds, so that they are known to a few per cent), then
  1. the promised power (`power.power`) against the simulated power of the primary test at K = 3, 5,
     10, 20 (significant at α = 0.05 with the right sign): |difference| ≤ 0.05 in every cell;
  2. the K the plan names for 80 % power (`power.seeds_needed`) simulated: its power never more than
     0.05 below what the plan promised for that K (more power than promised is reported: '+');
  3. from a pilot of 3 paired seeds (what a user runs first): how often the plan's K, and the K at the
     upper end of σ²_d's 80 % interval, gives a significant study — reported, not checked: 2 degrees
     of freedom leave σ²_d uncertain by a factor of 4.5 either way.

    python bench/seed_planning.py [--studies 1000] [--seed 0] [--quick]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from verdict_calibration import ETA, GAMMA, N_NEG, N_POS, TARGET_AUC, TAU, mu_for_auc, population_auc  # noqa: E402

from pneumo_ray.analysis import power as pw  # noqa: E402
from pneumo_ray.analysis.stats import auc_diff_two_level, delong_var, structural_components  # noqa: E402

ALPHA = 0.05
DELTAS = (0.005, 0.01, 0.02)
K_VALUES = (3, 5, 10, 20)
TOLERANCE = 0.05
PILOT_SEEDS = 3
PLAN_DELTA = 0.01


@dataclass(frozen=True)
class Regime:
    name: str
    share: float = 0.0  # correlation of the two arms' same-seed draws h_k, g_k
    omega: float = 0.0  # per-image pattern shared by one arm's seeds
    tau: float = TAU


# `paired`: share chosen so that σ²_d, V_c and V_e land where the real arms' do (module docstring)
REGIMES = (Regime("independent"), Regime("paired", share=0.97), Regime("shared-test", omega=0.5))


def _paired(rng, x: np.ndarray, share: float) -> np.ndarray:
    """Standard normal draws that correlate `share` with the standard normal draws `x`."""
    return share * x + math.sqrt(1 - share**2) * rng.normal(size=x.shape)


def simulate(rng, k: int, mu_a: float, mu_b: float, r: Regime) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One ablation: ([K, N] probabilities of arm a, of arm b, labels) on a fresh test set. Each arm's
    runs have verdict_calibration's distribution; the same-seed draws h_k, g_k of the two arms
    correlate r.share."""
    y = np.r_[np.zeros(N_NEG, int), np.ones(N_POS, int)]
    n = len(y)
    b, u = rng.normal(size=n), rng.normal(size=n)
    draws_a = (rng.normal(size=(k, 1)), rng.normal(size=(k, 1)), rng.normal(size=(k, n)))  # h, g, e (standard)
    draws_b = (_paired(rng, draws_a[0], r.share), _paired(rng, draws_a[1], r.share), rng.normal(size=(k, n)))
    arms = []
    for mu, (h, g, e) in ((mu_a, draws_a), (mu_b, draws_b)):
        v = rng.normal(0.0, r.omega, n) if r.omega else 0.0
        logit = (mu + ETA * h) * (2 * y - 1) / 2 + b + v + GAMMA * g * u + r.tau * e
        arms.append(1.0 / (1.0 + np.exp(-logit)))
    return arms[0], arms[1], y


def true_components(rng, mu_a: float, mu_b: float, r: Regime, n: int, k0: int = 20) -> pw.Components:
    """The components pilots measure at this truth, averaged over `n` pilots of `k0` seeds (V_c not
    truncated at 0 and σ²_d not floored, so that the averages are unbiased)."""
    seed, shared, per_seed = [], [], []
    for _ in range(n):
        a, b, y = simulate(rng, k0, mu_a, mu_b, r)
        auc_a, v10_a, v01_a = structural_components(a, y)
        auc_b, v10_b, v01_b = structural_components(b, y)
        z10, z01 = v10_a - v10_b, v01_a - v01_b
        each, avg = float(delong_var(z10, z01).mean()), float(delong_var(z10.mean(0), z01.mean(0)))
        v_e = (each - avg) * k0 / (k0 - 1)
        seed.append(np.var(auc_a - auc_b, ddof=1))
        shared.append(avg - v_e / k0)
        per_seed.append(v_e)
    return pw.Components(
        float(np.mean(seed)), max(float(np.mean(shared)), 0.0), float(np.mean(per_seed)), k0, N_NEG + N_POS
    )


def significant(rng, k: int, mu_a: float, mu_b: float, r: Regime, n: int) -> np.ndarray:
    """Per simulated study at K seeds: the primary test significant with the right sign (a better)."""
    out = np.zeros(n, bool)
    for i in range(n):
        a, b, y = simulate(rng, k, mu_a, mu_b, r)
        t = auc_diff_two_level(a, b, y)
        out[i] = t["p"] < ALPHA and t["diff"] > 0
    return out


def _se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 1e-12) / n)


def check_regime(rng, r: Regime, n: int, n_true: int, n_pilots: int) -> tuple[list[float], list[float], list[str]]:
    """Steps 1-3 for one regime: (promised − simulated of every grid cell, of every planned K, lines)."""
    grid, planned, lines = [], [], []
    mu0 = mu_for_auc(TARGET_AUC, omega=r.omega, tau=r.tau)
    auc0 = population_auc(mu0, omega=r.omega, tau=r.tau)
    lines.append(f"\n== regime {r.name} (share {r.share}, ω {r.omega}, τ {r.tau}; arm b at expected AUC {auc0:.3f})")
    lines.append(
        f"   {'ΔAUC':>6} {'σ²_d':>9} {'V_c':>9} {'V_e':>9}   "
        + "   ".join(f"K={k:<2} plan / sim" for k in K_VALUES)
        + "   K80: plan / sim"
    )
    for d in DELTAS:
        mu_a = mu_for_auc(auc0 + d, omega=r.omega, tau=r.tau)
        c = true_components(rng, mu_a, mu0, r, n_true)
        cells = []
        for k in K_VALUES:
            promised, sim = pw.power(c, d, k), significant(rng, k, mu_a, mu0, r, n).mean()
            grid.append(promised - sim)
            cells.append(f"{promised:.3f} / {sim:.3f}{'!' if abs(promised - sim) > TOLERANCE else ''}")
        k80 = pw.seeds_needed(c, d)
        if k80 is None:
            k80_cell = f"none (cap {pw.power_limit(c, d):.2f})"
        else:
            promised, sim = pw.power(c, d, k80), significant(rng, k80, mu_a, mu0, r, n).mean()
            planned.append(promised - sim)
            mark = "!" if promised - sim > TOLERANCE else "+" if sim - promised > TOLERANCE else ""
            k80_cell = f"K={k80}: {promised:.3f} / {sim:.3f}{mark}"
        lines.append(
            f"   {d:>6} {c.seed:9.2e} {c.test_shared:9.2e} {c.test_per_seed:9.2e}   "
            + "   ".join(cells)
            + f"   {k80_cell}"
        )
    lines += pilots(rng, r, mu0, auc0, n_pilots)
    return grid, planned, lines


def pilots(rng, r: Regime, mu0: float, auc0: float, n: int) -> list[str]:
    """From pilots of PILOT_SEEDS paired seeds at true ΔAUC PLAN_DELTA: the plan's K (point estimate and
    the upper end of σ²_d's 80 % interval) and whether a study with that many seeds is significant."""
    mu_a = mu_for_auc(auc0 + PLAN_DELTA, omega=r.omega, tau=r.tau)
    ks = {"point": [], "upper": []}
    hits = {"point": [], "upper": []}
    for _ in range(n):
        a, b, y = simulate(rng, PILOT_SEEDS, mu_a, mu0, r)
        c = pw.paired_components(a, b, y)
        for name, comps in (("point", c), ("upper", pw.seed_var_upper(c))):
            k = pw.seeds_needed(comps, PLAN_DELTA, k_max=200)
            ks[name].append(k)
            if k is not None:
                hits[name].append(bool(significant(rng, k, mu_a, mu0, r, 1)[0]))
    out = [f"   from a pilot of {PILOT_SEEDS} paired seeds at true ΔAUC {PLAN_DELTA} ({n} pilots):"]
    for name, what in (("point", "the plan's K"), ("upper", "K at the upper end of σ²_d's 80 % interval")):
        k, h = np.array([x for x in ks[name] if x is not None]), np.array(hits[name])
        none = sum(x is None for x in ks[name])
        text = f"     {what}: "
        if len(k):
            text += (
                f"median {np.median(k):.0f} (quartiles {np.percentile(k, 25):.0f}–{np.percentile(k, 75):.0f}); "
                f"the study at that K significant in {h.mean():.2f} ± {_se(h.mean(), len(h)):.2f}"
            )
        out.append(text + (f"{'; ' if len(k) else ''}no K ≤ 200 reaches 80 % in {none} of {n} pilots" if none else ""))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--studies", type=int, default=1000, help="simulated studies per cell (default 1000: a power to about ±0.016)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed of the whole simulation (default 0)")
    p.add_argument("--quick", action="store_true", help="200 studies per cell, fewer pilots: a minute, a smoke check")
    args = p.parse_args(argv)
    n = 200 if args.quick else args.studies
    n_true, n_pilots = (40, 100) if args.quick else (300, 400)
    t0 = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    print(
        f"promised power (power.power from the components pilots measure at the truth) vs simulated power of the "
        f"primary test, α = {ALPHA}, {n} studies per cell (±{2 * _se(0.5, n):.3f} at 0.5); components averaged over "
        f"{n_true} pilots of 20 seeds; '!' marks a cell off by more than {TOLERANCE} (for the planned K: short "
        "of its promise)"
    )
    grid, planned = [], []
    for r in REGIMES:
        g, k, lines = check_regime(rng, r, n, n_true, n_pilots)
        grid += g
        planned += k
        print("\n".join(lines), flush=True)
    worst = max(map(abs, grid))
    short, excess = max(planned), -min(planned)
    ok = worst <= TOLERANCE and short <= TOLERANCE
    print(
        f"\n1. promised vs simulated power, {len(grid)} cells: largest difference {worst:.3f} "
        f"({'within' if worst <= TOLERANCE else 'NOT within'} ±{TOLERANCE})"
    )
    print(
        f"2. the K planned for 80 %, {len(planned)} cases: largest shortfall of the simulated power below the "
        f"promise {max(short, 0):.3f} ({'within' if short <= TOLERANCE else 'NOT within'} {TOLERANCE}); largest "
        f"excess {max(excess, 0):.3f} ('+': the plan under-promised, more seeds than needed)"
    )
    print("OK" if ok else "FAIL")
    print(f"wall time {time.perf_counter() - t0:.1f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
