"""Calibration of what study.sweep --ensemble reports: DeLong's paired test of two FIXED models on the
same test images (the ensemble against the best single trial), and the stratified percentile
bootstrap intervals of one fixed model's test metrics (the report's and ensemble.parquet's).

Both treat the trained models as fixed: the only randomness is which test images were drawn. So the
simulation draws a fresh test set of the real data's size (624 images: 234 NORMAL, 390 PNEUMONIA) in
every study and scores it with fixed scoring rules. Per image: label y, a difficulty b ~ N(0, 1) that
every model shares, and per-model noise. A model scores with the logit

    μ · (2y − 1) / 2 + b + σ · e,        population AUC = Φ(μ / √(2 (1 + σ²)))

Scenarios of the null (two models, EQUAL population AUC 0.95; r = the within-class correlation of
their scores, as measured in the simulated data):
  symmetric σ:  both σ, independent e (r = 1/(1 + σ²): 0.80, 0.96, 0.99 for σ = 0.5, 0.2, 0.1);
  nested:       the single model's noise e₁ is one of the K = 3 members' noises that the "ensemble"
                averages, σ·(e₁ + e₂ + e₃)/3, and the ensemble's μ is lowered until its AUC equals the
                single model's, as when the best single trial is a member of the ensemble;
  unequal:      σ 0.1 against σ 0.5 (different shapes, equal AUC).
Then power: the nested pair with the ensemble's population AUC raised by Δ = 0.005, 0.01, 0.02.
Coverage: the 95% percentile intervals (stratified bootstrap of the test images, `curves.bootstrap_metrics`)
of AUC, accuracy, balanced accuracy, sensitivity and specificity at a fixed threshold (sensitivity
≈ 0.96, specificity ≈ 0.72, as the real models), against the model's population values.

    python bench/ensemble_calibration.py [--studies 2000] [--coverage-studies 400] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pneumo_ray.analysis.curves import CI_METRICS, bootstrap_counts, bootstrap_metrics  # noqa: E402
from pneumo_ray.analysis.stats import delong  # noqa: E402

N_NEG, N_POS = 234, 390  # the Kermany test set
TARGET_AUC = 0.95
ALPHA = 0.05
K_MEMBERS = 3
DELTAS = (0.005, 0.01, 0.02)
THRESHOLD = -0.6  # on the logit scale: sensitivity ≈ 0.96, specificity ≈ 0.72 at σ = 0.2
FPR_RANGE = (0.03, 0.07)
COVERAGE_RANGE = (0.92, 0.98)


def norm_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


def auc_of(mu: float, sigma: float) -> float:
    return norm_cdf(mu / math.sqrt(2 * (1 + sigma**2)))


def mu_for(auc: float, sigma: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(auc) * math.sqrt(2 * (1 + sigma**2)))


def labels() -> np.ndarray:
    return np.r_[np.zeros(N_NEG, int), np.ones(N_POS, int)]


def symmetric(rng, sigma_a: float, sigma_b: float, mu_a: float, mu_b: float) -> tuple[np.ndarray, np.ndarray]:
    y = labels()
    b = rng.normal(size=len(y))
    sa = mu_a * (2 * y - 1) / 2 + b + sigma_a * rng.normal(size=len(y))
    sb = mu_b * (2 * y - 1) / 2 + b + sigma_b * rng.normal(size=len(y))
    return sa, sb


def nested(rng, sigma: float, mu_ens: float, mu_single: float) -> tuple[np.ndarray, np.ndarray]:
    """(ensemble, single): the single model's noise is one of the ensemble members' noises."""
    y = labels()
    b = rng.normal(size=len(y))
    e = rng.normal(size=(K_MEMBERS, len(y)))
    ens = mu_ens * (2 * y - 1) / 2 + b + sigma * e.mean(0)
    single = mu_single * (2 * y - 1) / 2 + b + sigma * e[0]
    return ens, single


def within_class_r(a: np.ndarray, b: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean([np.corrcoef(a[y == c], b[y == c])[0, 1] for c in (0, 1)]))


def wilson(k: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    p = k / n
    c = (p + z * z / (2 * n)) / (1 + z * z / n)
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return c - h, c + h


def rate(x) -> str:
    x = np.asarray(x, float)
    lo, hi = wilson(x.sum(), len(x))
    return f"{x.mean():.3f} [{lo:.3f}, {hi:.3f}]"


def delong_study(rng, n: int, draw) -> tuple[np.ndarray, float]:
    """Rejections at α (of `n` studies of the pair `draw(rng)`) and the mean within-class r."""
    y = labels()
    rej, r = np.zeros(n, bool), []
    for i in range(n):
        a, b = draw(rng)
        rej[i] = delong(a, b, y)["p"] < ALPHA
        if i < 200:
            r.append(within_class_r(a, b, y))
    return rej, float(np.mean(r))


def power_study(rng, n: int, draw) -> np.ndarray:
    y = labels()
    out = np.zeros(n, bool)
    for i in range(n):
        a, b = draw(rng)
        d = delong(a, b, y)
        out[i] = d["p"] < ALPHA and d["diff"] > 0
    return out


def population_metrics(mu: float, sigma: float, c: float) -> dict:
    s = math.sqrt(1 + sigma**2)
    sens = 1 - norm_cdf((c - mu / 2) / s)
    spec = norm_cdf((c + mu / 2) / s)
    acc = (N_POS * sens + N_NEG * spec) / (N_POS + N_NEG)  # at the test set's fixed class sizes
    return dict(
        auc=auc_of(mu, sigma), accuracy=acc, balanced_accuracy=(sens + spec) / 2, sensitivity=sens, specificity=spec
    )


def coverage_study(rng, n: int, sigma: float, n_boot: int) -> dict:
    mu = mu_for(TARGET_AUC, sigma)
    truth = population_metrics(mu, sigma, THRESHOLD)
    y = labels()
    hits = {m: [] for m in CI_METRICS}
    for i in range(n):
        s, _ = symmetric(rng, sigma, sigma, mu, mu)
        ci = bootstrap_metrics(y, s, THRESHOLD, bootstrap_counts(y, n_boot, seed=i))
        for m in CI_METRICS:
            hits[m].append(ci[m][1] <= truth[m] <= ci[m][2])
    return dict(truth=truth, hits={m: np.array(v) for m, v in hits.items()})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--studies", type=int, default=2000, help="null studies per scenario (default 2000: ±0.01)")
    p.add_argument("--coverage-studies", type=int, default=400, help="studies for the interval coverage (default 400)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples per coverage study (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    n = args.studies
    print(
        f"{N_NEG} NORMAL / {N_POS} PNEUMONIA test images per study, fixed models, population AUC {TARGET_AUC}; "
        f"α = {ALPHA}; [Wilson 95% CI]\n"
    )
    print(f"DeLong's paired test, false-positive rate under the null (equal population AUC), {n} studies each")
    ok = True
    sig = 0.2
    mu_single = mu_for(TARGET_AUC, sig)
    mu_ens = mu_for(TARGET_AUC, sig / math.sqrt(K_MEMBERS))
    scenarios = {
        "symmetric σ = 0.5": lambda r: symmetric(r, 0.5, 0.5, mu_for(TARGET_AUC, 0.5), mu_for(TARGET_AUC, 0.5)),
        "symmetric σ = 0.2": lambda r: symmetric(r, 0.2, 0.2, mu_for(TARGET_AUC, 0.2), mu_for(TARGET_AUC, 0.2)),
        "symmetric σ = 0.1": lambda r: symmetric(r, 0.1, 0.1, mu_for(TARGET_AUC, 0.1), mu_for(TARGET_AUC, 0.1)),
        f"nested (ensemble of {K_MEMBERS} ∋ single), σ = 0.2": lambda r: nested(r, sig, mu_ens, mu_single),
        "nested, σ = 0.5": lambda r: nested(r, 0.5, mu_for(TARGET_AUC, 0.5 / math.sqrt(3)), mu_for(TARGET_AUC, 0.5)),
        "unequal σ 0.1 vs 0.5": lambda r: symmetric(r, 0.1, 0.5, mu_for(TARGET_AUC, 0.1), mu_for(TARGET_AUC, 0.5)),
    }
    for name, draw in scenarios.items():
        rej, r = delong_study(rng, n, draw)
        good = FPR_RANGE[0] <= rej.mean() <= FPR_RANGE[1]
        ok &= good
        print(f"  {name:<40} r = {r:.3f}   FPR {rate(rej)}   {'OK' if good else 'OUT OF RANGE'}")
    print(f"\npower (p < {ALPHA}, ensemble ahead), nested σ = 0.2, {n // 2} studies each")
    for d in DELTAS:
        mu_up = mu_for(TARGET_AUC + d, sig / math.sqrt(K_MEMBERS))
        pw = power_study(rng, n // 2, lambda r, m=mu_up: nested(r, sig, m, mu_single))
        print(f"  true ΔAUC {d:<6} power {rate(pw)}")
    print(
        f"\n95% stratified percentile bootstrap intervals of one fixed model ({args.n_boot} resamples), coverage "
        f"of the population value, {args.coverage_studies} studies each"
    )
    for sigma in (0.2, 0.5):
        cov = coverage_study(rng, args.coverage_studies, sigma, args.n_boot)
        truth = ", ".join(f"{m} {v:.3f}" for m, v in cov["truth"].items())
        print(f"  σ = {sigma}: population {truth}")
        for m in CI_METRICS:
            c = cov["hits"][m]
            good = COVERAGE_RANGE[0] <= c.mean() <= COVERAGE_RANGE[1]
            ok &= good
            print(f"    {m:<18} coverage {rate(c)}   {'OK' if good else 'OUT OF RANGE'}")
    print(f"\nwall time {time.perf_counter() - t0:.1f} s; {'all within range' if ok else 'SOMETHING OUT OF RANGE'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
