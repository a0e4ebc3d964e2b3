"""The seed plan of an ablation: from the seeds already run, the power of the primary test at
ΔAUC 0.005 / 0.01 / 0.02 for K = 3, 5, 10, 20 seeds, the seeds needed for 80 % power at the
difference the user names, and what those seeds cost at the measured time per seed.

Per model, every arm that shares at least 2 seeds (with test predictions) with transfer is planned
from those paired seeds (`power.paired_components`); where no arm can be paired with transfer, each
arm with at least 2 seeds is planned on its own (`power.one_arm_components`, its assumptions stated).
`seed_plans` takes the ablation tables (numbers in), `format_plan` / `plan_table` give the text of
`study.ablate --plan` and the report's table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from pneumo_ray.analysis import power as pw
from pneumo_ray.analysis.stats import structural_components
from pneumo_ray.analysis.verdicts import has_preds, seed_probs
from pneumo_ray.config.arms import REFERENCE

DELTAS = (0.005, 0.01, 0.02)
SEEDS = (3, 5, 10, 20)
DEFAULT_DELTA = 0.01


@dataclass(frozen=True)
class Plan:
    """One comparison's plan: `arm` against `reference` (None: `arm` alone, the other arm assumed)."""

    model: str
    arm: str
    reference: str | None
    components: pw.Components
    seeds_run: dict  # {arm: seeds already run (with predictions)}
    seconds_per_seed: dict  # {arm: mean measured wall time of one seed}
    epochs_per_seed: dict  # {arm: mean fine-tuning epochs run per seed}
    observed: float  # the pilot's mean AUC difference (nan for one arm)
    delta: float  # the ΔAUC the user plans for
    powers: dict  # {(ΔAUC, K): power}
    needed: int | None  # seeds per arm for 80 % power at `delta` (None: no K ≤ K_MAX)
    needed_upper: int | None  # the same with σ²_d at the upper end of its 80 % interval
    cap: float  # the power as K grows without bound (the shared test-image variance left)

    @property
    def title(self) -> str:
        if self.reference is None:
            return (
                f"{self.model}: {self.arm} against an arm not run yet ({self.components.n_seeds} seeds of {self.arm})"
            )
        return (
            f"{self.model}: {self.arm} vs {self.reference} ({self.components.n_seeds} paired seeds, "
            f"{self.components.n_test} test images; observed ΔAUC {self.observed:+.4f})"
        )

    def cost(self, k: int) -> tuple[int, float]:
        """(runs still to train, their seconds) for K seeds in both arms; an arm not run yet is taken to
        cost what the arm that ran does."""
        arms = [self.arm] + [self.reference or "(the other arm)"]
        known = self.seconds_per_seed[self.arm]
        runs = [max(k - self.seeds_run.get(a, 0), 0) for a in arms]
        return sum(runs), sum(n * self.seconds_per_seed.get(a, known) for n, a in zip(runs, arms))


def _usable(ablations: pd.DataFrame) -> pd.DataFrame:
    ok = ablations[ablations["error"].isna()] if "error" in ablations else ablations
    return ok[ok["test_auc"].notna()] if "test_auc" in ok else ok.iloc[0:0]


def _timing(rows: pd.DataFrame) -> tuple[float, float]:
    """(mean wall seconds, mean fine-tuning epochs) of one seed."""
    wall = rows["wall_s"].astype(float).mean() if "wall_s" in rows else math.nan
    epochs = rows["epochs_run"].astype(float).mean() if "epochs_run" in rows else math.nan
    return float(wall), float(epochs)


def _plan(model, arm, reference, comps, observed, rows_by_arm, delta) -> Plan:
    timing = {a: _timing(r) for a, r in rows_by_arm.items()}
    powers = {(d, k): pw.power(comps, d, k) for d in DELTAS for k in SEEDS}
    return Plan(
        model=model,
        arm=arm,
        reference=reference,
        components=comps,
        seeds_run={a: len(r) for a, r in rows_by_arm.items()},
        seconds_per_seed={a: t[0] for a, t in timing.items()},
        epochs_per_seed={a: t[1] for a, t in timing.items()},
        observed=observed,
        delta=delta,
        powers=powers,
        needed=pw.seeds_needed(comps, delta),
        needed_upper=pw.seeds_needed(pw.seed_var_upper(comps), delta),
        cap=pw.power_limit(comps, delta),
    )


def seed_plans(
    ablations: pd.DataFrame, predictions: pd.DataFrame, delta: float = DEFAULT_DELTA, pair_correlation: float = 0.0
) -> list[Plan]:
    """The plans of every model in the ablation tables (see the module docstring); [] when no arm has
    2 seeds with test predictions. `pair_correlation` is used only where an arm is planned alone."""
    ok = _usable(ablations)
    plans = []
    for model in sorted(ok["model"].unique()) if len(ok) else []:
        mine = ok[ok.model == model]
        arms = {a: g for a, g in mine.groupby("arm")}
        seeds = {a: sorted(g["seed"]) for a, g in arms.items()}
        with_preds = {a: s for a, s in seeds.items() if len(s) >= 2 and has_preds(predictions, model, a, s)}
        paired = []
        if REFERENCE in with_preds:
            for arm in sorted(set(with_preds) - {REFERENCE}):
                common = sorted(set(seeds[arm]) & set(seeds[REFERENCE]))
                if len(common) >= 2:
                    a, y = seed_probs(predictions, model, arm, common)
                    b, _ = seed_probs(predictions, model, REFERENCE, common)
                    comps = pw.paired_components(a, b, y)
                    observed = float((structural_components(a, y)[0] - structural_components(b, y)[0]).mean())
                    rows = {arm: arms[arm], REFERENCE: arms[REFERENCE]}
                    paired.append(_plan(model, arm, REFERENCE, comps, observed, rows, delta))
        if paired:
            plans += paired
            continue
        for arm, s in sorted(with_preds.items()):
            p, y = seed_probs(predictions, model, arm, s)
            comps = pw.one_arm_components(p, y, pair_correlation)
            plans.append(_plan(model, arm, None, comps, math.nan, {arm: arms[arm]}, delta))
    return plans


def plan_table(plans: list[Plan]) -> pd.DataFrame:
    """One row per comparison and K: the power at each ΔAUC."""
    rows = []
    for p in plans:
        for k in SEEDS:
            row = {"model": p.model, "comparison": f"{p.arm} vs {p.reference or '(not run)'}", "seeds K": k}
            row.update({f"power at ΔAUC {d:g}": round(p.powers[(d, k)], 2) for d in DELTAS})
            rows.append(row)
    return pd.DataFrame(rows)


def _duration(seconds: float) -> str:
    if math.isnan(seconds):
        return "unknown time (no wall_s recorded)"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.{1 if seconds < 600 else 0}f} min"
    return f"{seconds / 3600:.1f} h"


def _needed(p: Plan, k: int | None, what: str) -> str:
    if k is None:
        return (
            f"{what}: no number of seeds reaches 80 % power at ΔAUC {p.delta:g} — the test images' own "
            f"sampling caps it at {p.cap:.2f}; a larger test set is needed"
        )
    runs, seconds = p.cost(k)
    more = f"{runs} more run{'s' if runs != 1 else ''}, about {_duration(seconds)} of trial time" if runs else "done"
    return f"{what}: K = {k} seeds per arm ({more})"


def plan_lines(p: Plan) -> list[str]:
    """The sentences under a plan's table: components, seeds needed, cost, assumptions."""
    c = p.components
    up = pw.seed_var_upper(c)
    lines = [
        f"variance of one seed's paired AUC difference σ²_d = {c.seed:.2g} (from {c.n_seeds - 1} df: at the upper "
        f"end of its 80 % interval {up.seed:.2g}); test-image sampling: shared by every seed V_c = "
        f"{c.test_shared:.2g}, per seed V_e = {c.test_per_seed:.2g}",
        _needed(p, p.needed, f"80 % power at ΔAUC {p.delta:g}"),
        _needed(p, p.needed_upper, "if σ²_d is at the upper end of its 80 % interval"),
        "time per seed: "
        + "; ".join(
            f"{a} {_duration(s)} ({p.epochs_per_seed[a]:.0f} fine-tuning epochs)" for a, s in p.seconds_per_seed.items()
        )
        + " (trial time: seeds that run side by side take less elapsed time)",
    ]
    if c.assumed:
        lines.append(f"assumed: {c.assumed}")
    return lines


def format_plan(plans: list[Plan]) -> str:
    """The text `study.ablate --plan` prints."""
    out = [
        "seed plan: power of the primary paired test (seeds + test images, α = 0.05, significant with the "
        "right sign) if the true ΔAUC were each column's, with the variance measured in the seeds run so far"
    ]
    table = plan_table(plans)
    for p in plans:
        out.append(f"\n{p.title}")
        mine = table[(table.model == p.model) & (table.comparison == f"{p.arm} vs {p.reference or '(not run)'}")]
        out.append(mine.drop(columns=["model", "comparison"]).to_string(index=False))
        out += [f"  {line}" for line in plan_lines(p)]
    return "\n".join(out)
