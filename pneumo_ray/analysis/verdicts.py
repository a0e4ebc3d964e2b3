"""The ablation verdicts: per (model, arm) the mean and 95% CI across seeds of the test metrics, and
per model every arm against the transfer arm on the same test images (paired bootstrap of the AUC
difference over images and seeds; DeLong's test on the seed-averaged probabilities)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from pneumo_ray.config.arms import REFERENCE
from pneumo_ray.analysis.stats import delong, mean_ci, paired_bootstrap_auc

METRICS = ("auc", "accuracy", "sensitivity", "specificity", "f1", "balanced_accuracy")


def _probs(preds: pd.DataFrame, model: str, arm: str, seeds: list[int]) -> tuple[np.ndarray, np.ndarray]:
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


def summarize(ablations: pd.DataFrame, predictions: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Rows of kind 'arm' (metric means and CIs across seeds) and 'vs_transfer' (paired tests)."""
    rows = []
    ok = ablations[ablations["error"].isna() & ablations["test_auc"].notna()]
    for (model, arm), g in ok.groupby(["model", "arm"], sort=True):
        row = dict(kind="arm", model=model, arm=arm, n_seeds=len(g), seeds=",".join(map(str, sorted(g["seed"]))))
        for m in METRICS + ("val_auc",):
            col = m if m.startswith("val_") else f"test_{m}"
            mean, lo, hi = mean_ci(g[col].to_numpy(float))
            lo, hi = max(lo, 0.0), min(hi, 1.0)   # metrics live in [0, 1] (nan stays nan)
            row.update({f"{col}_mean": mean, f"{col}_ci_low": lo, f"{col}_ci_high": hi})
        rows.append(row)
    for model in sorted(ok["model"].unique()):
        ref = ok[(ok.model == model) & (ok.arm == REFERENCE)]
        for arm in sorted(set(ok[ok.model == model]["arm"]) - {REFERENCE}):
            other = ok[(ok.model == model) & (ok.arm == arm)]
            seeds = sorted(set(ref["seed"]) & set(other["seed"]))
            row = dict(kind="vs_transfer", model=model, arm=arm, reference=REFERENCE, n_seeds=len(seeds),
                       seeds=",".join(map(str, seeds)))
            if not seeds:
                rows.append(row)
                continue
            a, y = _probs(predictions, model, arm, seeds)
            b, y_ref = _probs(predictions, model, REFERENCE, seeds)
            if a.shape != b.shape or not np.array_equal(y, y_ref):
                raise ValueError(f"{model}: arm {arm} and {REFERENCE} were tested on different images")
            boot = paired_bootstrap_auc(a, b, y, n_boot=n_boot, seed=seed)
            dl = delong(a.mean(axis=0), b.mean(axis=0), y)
            row.update(n_test=len(y), auc_diff=boot["diff"], auc_diff_ci_low=boot["ci_low"],
                       auc_diff_ci_high=boot["ci_high"], p_bootstrap=boot["p"], n_boot=n_boot,
                       delong_auc_arm=dl["auc_a"], delong_auc_reference=dl["auc_b"], delong_z=dl["z"],
                       p_delong=dl["p"])
            rows.append(row)
    return pd.DataFrame(rows)


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
    lines = ["per arm: mean [95% CI] across seeds (t interval, clipped to [0, 1]), test set"]
    table = pd.DataFrame({
        "model": arms.model, "arm": arms.arm, "seeds": arms.n_seeds,
        **{name: [_ci(r[f"test_{m}_mean"], r[f"test_{m}_ci_low"], r[f"test_{m}_ci_high"]) for _, r in arms.iterrows()]
           for name, m in (("test AUC", "auc"), ("accuracy", "accuracy"), ("sensitivity", "sensitivity"),
                           ("specificity", "specificity"))},
        "val AUC": [_ci(r["val_auc_mean"], r["val_auc_ci_low"], r["val_auc_ci_high"]) for _, r in arms.iterrows()]})
    lines.append(table.to_string(index=False))
    vs = summary[summary.kind == "vs_transfer"]
    if len(vs):
        lines.append(f"\neach arm vs {REFERENCE}, paired on the same test images and seeds")
        out = []
        for _, r in vs.iterrows():
            if not r["n_seeds"]:
                out.append(dict(model=r.model, arm=r.arm, seeds=0, **{"ΔAUC [95% CI]": f"no {REFERENCE} run with the same seeds"}))
                continue
            out.append({"model": r.model, "arm": r.arm, "seeds": int(r.n_seeds),
                        "ΔAUC [95% CI]": f"{r.auc_diff:+.4f} [{r.auc_diff_ci_low:+.4f}, {r.auc_diff_ci_high:+.4f}]",
                        "p (bootstrap)": f"{r.p_bootstrap:.3g}",
                        "DeLong (seed-avg) AUCs": f"{r.delong_auc_arm:.4f} vs {r.delong_auc_reference:.4f}",
                        "z": f"{r.delong_z:+.2f}", "p (DeLong)": f"{r.p_delong:.3g}"})
        lines.append(pd.DataFrame(out).to_string(index=False))
        lines.append("ΔAUC = arm − transfer; bootstrap resamples test images (stratified) and seeds; "
                     "DeLong compares the seed-averaged probabilities.")
    return "\n".join(lines)
