"""The ablation verdicts: per (model, arm) the mean test metrics with intervals that say what they
cover, and per model every arm against the transfer arm on the same test images and seeds.

The primary comparison (`stats.auc_diff_two_level`) counts both sources of variation in a
seed-averaged AUC difference: training randomness (between-seed variance of the paired per-seed
differences) and the sampling of the test images (DeLong's variance of the seed-averaged AUCs),
with a Satterthwaite t reference; its false-positive rate was checked by simulation in the regime
of the real data (bench/verdict_calibration.py). p-values are Holm-adjusted over every arm
compared with transfer for one model, and the verdict words come from `p_holm` and the interval.

DeLong's test on the seed-averaged probabilities is kept as a secondary column
(`p_delong_fixed_models`): it asks whether these particular K trained models differ on the test
population, treats them as fixed, ignores seed-to-seed variation and therefore rejects a true
"no difference" far too often (63–67 % at α = 0.05 in simulation); it never drives a verdict.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from pneumo_ray.analysis.stats import auc_diff_two_level, auc_two_level, delong, holm, mean_ci
from pneumo_ray.config.arms import REFERENCE

METRICS = ("auc", "accuracy", "sensitivity", "specificity", "f1", "balanced_accuracy")
ALPHA = 0.05
ARM_HEADER = (
    "per arm: test AUC mean [95% CI covering seed-to-seed variation and the sampling of the test "
    "images];\nthreshold metrics at the loss's decision rule and val AUC: mean [95% t-interval across seeds "
    "only, test images held fixed]"
)


def seed_probs(preds: pd.DataFrame, model: str, arm: str, seeds: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """[seeds, images] probabilities (images in one fixed order, by path) and the labels."""
    mats, labels = [], None
    for seed in seeds:
        p = preds[(preds.model == model) & (preds.arm == arm) & (preds.seed == seed)].sort_values("path")
        mats.append(p["probability"].to_numpy(float))
        lab = p["label"].to_numpy(int)
        if labels is not None and not np.array_equal(labels, lab):
            raise ValueError(f"{model}/{arm} seed {seed}: test images differ from the other seeds")
        labels = lab
    return np.stack(mats), labels


def has_preds(preds: pd.DataFrame, model: str, arm: str, seeds: list[int]) -> bool:
    if preds.empty:
        return False
    mine = preds[(preds.model == model) & (preds.arm == arm)]
    return set(seeds) <= set(mine["seed"])


def _provenance(g: pd.DataFrame) -> dict:
    """Where an arm's configuration came from and which arm it was tuned for (None: no arm)."""
    tuned = g["tuned_for"].dropna().unique() if "tuned_for" in g else []
    source = g["config_source"].dropna().unique() if "config_source" in g else []
    return dict(tuned_for=tuned[0] if len(tuned) else None, config_source=source[0] if len(source) else None)


def arm_row(model: str, arm: str, g: pd.DataFrame, preds: pd.DataFrame) -> dict:
    seeds = sorted(g["seed"])
    row = dict(kind="arm", model=model, arm=arm, n_seeds=len(g), seeds=",".join(map(str, seeds)), **_provenance(g))
    for m in METRICS + ("val_auc",):
        col = m if m.startswith("val_") else f"test_{m}"
        mean, lo, hi = mean_ci(g[col].to_numpy(float)) if col in g else (math.nan, math.nan, math.nan)
        lo, hi = max(lo, 0.0), min(hi, 1.0)  # metrics live in [0, 1] (nan stays nan)
        row.update({f"{col}_mean": mean, f"{col}_ci_low": lo, f"{col}_ci_high": hi})
    row["test_auc_ci_covers"] = "seeds only (no predictions)"
    if has_preds(preds, model, arm, seeds):
        p, y = seed_probs(preds, model, arm, seeds)
        two = auc_two_level(p, y)
        row.update(
            test_auc_mean=two["mean"],
            test_auc_ci_low=two["ci_low"],
            test_auc_ci_high=two["ci_high"],
            test_auc_var_seed=two["var_seed"],
            test_auc_var_test=two["var_test"],
            test_auc_df=two["df"],
            test_auc_ci_covers="seeds and test images",
        )
    return row


def fairness_warning(arm: str, tuned_arm: str | None, tuned_ref: str | None) -> str | None:
    """A configuration tuned for one arm and run by another tilts the comparison toward the first."""
    off = [(a, t) for a, t in ((arm, tuned_arm), (REFERENCE, tuned_ref)) if t is not None and t != a]
    if not off:
        return None
    return (
        "; ".join(f"{a} runs at a configuration tuned for {t}" for a, t in off)
        + " (tilted comparison: use --tune N to tune each arm on its own)"
    )


def comparison_row(model: str, arm: str, ok: pd.DataFrame, preds: pd.DataFrame) -> dict:
    ref = ok[(ok.model == model) & (ok.arm == REFERENCE)]
    other = ok[(ok.model == model) & (ok.arm == arm)]
    seeds = sorted(set(ref["seed"]) & set(other["seed"]))
    row = dict(
        kind="vs_transfer",
        model=model,
        arm=arm,
        reference=REFERENCE,
        n_seeds=len(seeds),
        seeds=",".join(map(str, seeds)),
        warning=fairness_warning(arm, _provenance(other)["tuned_for"], _provenance(ref)["tuned_for"]),
    )
    if not seeds or not (has_preds(preds, model, arm, seeds) and has_preds(preds, model, REFERENCE, seeds)):
        return row
    a, y = seed_probs(preds, model, arm, seeds)
    b, y_ref = seed_probs(preds, model, REFERENCE, seeds)
    if a.shape != b.shape or not np.array_equal(y, y_ref):
        raise ValueError(f"{model}: arm {arm} and {REFERENCE} were tested on different images")
    two = auc_diff_two_level(a, b, y)
    dl = delong(a.mean(axis=0), b.mean(axis=0), y)
    row.update(
        n_test=len(y),
        auc_diff=two["diff"],
        auc_diff_se=two["se"],
        auc_diff_df=two["df"],
        auc_diff_ci_low=two["ci_low"],
        auc_diff_ci_high=two["ci_high"],
        p_value=two["p"],
        var_seed=two["var_seed"],
        var_test=two["var_test"],
        method=two["method"],
        delong_auc_arm=dl["auc_a"],
        delong_auc_reference=dl["auc_b"],
        delong_z=dl["z"],
        p_delong_fixed_models=dl["p"],
    )
    return row


def summarize(ablations: pd.DataFrame, predictions: pd.DataFrame) -> pd.DataFrame:
    """Rows of kind 'arm' (metric means and intervals) and 'vs_transfer' (paired tests, Holm-adjusted
    per model over every arm compared with transfer, and the verdict in words)."""
    rows = []
    ok = ablations[ablations["error"].isna() & ablations["test_auc"].notna()]
    preds = predictions if predictions is not None else pd.DataFrame()
    for (model, arm), g in ok.groupby(["model", "arm"], sort=True):
        rows.append(arm_row(model, arm, g, preds))
    for model in sorted(ok["model"].unique()):
        vs = [comparison_row(model, arm, ok, preds) for arm in sorted(set(ok[ok.model == model]["arm"]) - {REFERENCE})]
        adjusted = holm([r.get("p_value", math.nan) for r in vs]) if vs else []
        for r, p in zip(vs, adjusted):
            r["p_holm"] = float(p)
            r["n_compared"] = int(sum(not math.isnan(x.get("p_value", math.nan)) for x in vs))
            r["verdict"] = verdict(r)
        rows += vs
    return pd.DataFrame(rows)


def _num(x) -> float:
    return math.nan if x is None else float(x)


def verdict(r: dict) -> str:
    """The words of one comparison, from the Holm-adjusted p-value and the ΔAUC interval only:
    'no-pretrain vs transfer (cnn): no difference shown (ΔAUC −0.0040 [−0.0110, +0.0030], p_holm = 0.21)'
    or '… transfer better by 0.0120 [0.0040, 0.0200] in test AUC, p_holm = 0.008'."""
    ref = r.get("reference", REFERENCE)
    head = f"{r['arm']} vs {ref} ({r['model']})"
    d, lo, hi, p = (_num(r.get(k)) for k in ("auc_diff", "auc_diff_ci_low", "auc_diff_ci_high", "p_holm"))
    if math.isnan(d):
        return f"{head}: no seed trained (with test predictions) in both arms, no comparison yet"
    n = f"{int(r['n_seeds'])} paired seed{'s' if int(r['n_seeds']) != 1 else ''}, {int(r['n_test'])} test images"
    if not math.isnan(p) and p < ALPHA:
        better, (blo, bhi) = (r["arm"], (lo, hi)) if d > 0 else (ref, (-hi, -lo))
        text = f"{head}: {better} better by {abs(d):.4f} [{blo:.4f}, {bhi:.4f}] in test AUC, p_holm = {p:.2g} ({n})"
    else:
        text = f"{head}: no difference shown (ΔAUC {d:+.4f} [{lo:+.4f}, {hi:+.4f}], p_holm = {p:.2g}; {n})"
    return text + (f" — warning: {r['warning']}" if r.get("warning") else "")


def _ci(mean, lo, hi) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    if isinstance(lo, float) and math.isnan(lo):
        return f"{mean:.3f} (1 seed)"
    return f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


def format_summary(summary: pd.DataFrame) -> str:
    if summary.empty:
        return "no finished ablation runs yet"
    arms = summary[summary.kind == "arm"]
    lines = [ARM_HEADER]
    table = pd.DataFrame(
        {
            "model": arms.model,
            "arm": arms.arm,
            "seeds": arms.n_seeds,
            **{
                name: [
                    _ci(r[f"test_{m}_mean"], r[f"test_{m}_ci_low"], r[f"test_{m}_ci_high"]) for _, r in arms.iterrows()
                ]
                for name, m in (
                    ("test AUC", "auc"),
                    ("accuracy", "accuracy"),
                    ("balanced acc.", "balanced_accuracy"),
                    ("sensitivity", "sensitivity"),
                    ("specificity", "specificity"),
                )
            },
            "val AUC": [_ci(r["val_auc_mean"], r["val_auc_ci_low"], r["val_auc_ci_high"]) for _, r in arms.iterrows()],
            "configuration": [r.get("config_source") or "-" for _, r in arms.iterrows()],
        }
    )
    lines.append(table.to_string(index=False))
    seeds_only = arms[arms.get("test_auc_ci_covers", pd.Series(dtype=str)).ne("seeds and test images")]
    if len(seeds_only):
        lines.append(
            "(no test predictions for "
            + ", ".join(f"{r.model}/{r.arm}" for r in seeds_only.itertuples())
            + ": their test AUC interval covers seeds only)"
        )
    vs = summary[summary.kind == "vs_transfer"]
    if len(vs):
        lines.append(
            f"\neach arm vs {REFERENCE}, paired on the same test images and seeds "
            f"(primary test: seeds + test images, Holm-adjusted per model)"
        )
        out = []
        for _, r in vs.iterrows():
            if pd.isna(r.get("auc_diff")):
                out.append(
                    {
                        "model": r.model,
                        "arm": r.arm,
                        "seeds": int(r.n_seeds),
                        "ΔAUC [95% CI]": f"no {REFERENCE} run with the same seeds and predictions",
                    }
                )
                continue
            out.append(
                {
                    "model": r.model,
                    "arm": r.arm,
                    "seeds": int(r.n_seeds),
                    "ΔAUC [95% CI]": f"{r.auc_diff:+.4f} [{r.auc_diff_ci_low:+.4f}, {r.auc_diff_ci_high:+.4f}]",
                    "p": f"{r.p_value:.3g}",
                    "p_holm": f"{r.p_holm:.3g}",
                    "secondary: DeLong, fixed models": f"{r.p_delong_fixed_models:.3g}",
                }
            )
        lines.append(pd.DataFrame(out).to_string(index=False))
        lines.append(
            "ΔAUC = arm − transfer, mean over paired seeds. Secondary column: DeLong on the seed-averaged "
            "probabilities\ntreats the trained models as fixed (ignores seed variation): never a verdict."
        )
        lines.append("\nverdicts:")
        lines += [f"  {r['verdict']}" for _, r in vs.iterrows() if isinstance(r.get("verdict"), str)]
    return "\n".join(lines)
