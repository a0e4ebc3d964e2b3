"""The report's summary tables and sentences: best configuration per model, test metrics with
CIs (bootstrap over test images for a sweep's best trial, across seeds for ablation arms), the
ablation verdicts in plain words and the leakage-audit numbers of each pre-training."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from pneumo_ray.analysis.curves import CI_METRICS, bootstrap_counts, bootstrap_metrics
from pneumo_ray.config.ingredients import FIELDS as INGREDIENTS
from pneumo_ray.config.search import SEARCHED
from pneumo_ray.report.inputs import Candidate
from pneumo_ray.storage import provenance

MINUS = "\u2212"
SHOWN = {"auc": "test AUC", "balanced_accuracy": "balanced accuracy"}  # column names of the metrics


def num(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    return f"{x:.{digits}f}".replace("-", MINUS)


def ci(value: float | None, lo: float | None, hi: float | None, digits: int = 3) -> str:
    if lo is None or hi is None or any(isinstance(v, float) and math.isnan(v) for v in (lo, hi)):
        return num(value, digits)
    return f"{num(value, digits)} [{num(lo, digits)}, {num(hi, digits)}]"


def pval(p: float | None) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "p=–"
    return "p<0.001" if p < 0.001 else f"p={p:.3f}" if p < 0.01 else f"p={p:.2f}"


def _sci(x) -> str:
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"


def best_config_table(rows: list[dict], labels: list[str]) -> pd.DataFrame:
    """One row per model: where its best run comes from (trial, or seed of an ablation arm) and
    its configuration (trial columns, or an ablation row's config JSON): the searched
    hyper-parameters, and each fine-tuning ingredient that some row has on."""
    cfgs = [json.loads(r["config"]) if isinstance(r.get("config"), str) else r for r in rows]
    on = [f for f in INGREDIENTS if any(_on(c.get(f)) for c in cfgs)]
    params = [p for p in SEARCHED if p not in INGREDIENTS] + on
    out = []
    for label, r, cfg in zip(labels, rows, cfgs):
        out.append(
            {
                "model": label,
                "trial / seed": f"seed {r.get('seed')}" if "arm" in r else r.get("trial_id"),
                "stop reason": r.get("stop_reason", "–"),
                "epochs run": r.get("epochs_run"),
                "best epoch": r.get("best_epoch"),
                **{p: _sci(cfg.get(p)) for p in params},
                "val AUC": num(r.get("best_val_auc", r.get("val_auc"))),
                "threshold (loss rule)": num(r.get("test_threshold")),
            }
        )
    return pd.DataFrame(out)


def _on(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and bool(value)


def test_metric_table(cands: list[Candidate], n_boot: int = 2000, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """Test AUC, accuracy, balanced accuracy, sensitivity, specificity with 95% bootstrap CIs over the
    test images, at each candidate's decision threshold (fixed by its loss). Returns (display table,
    {label: raw metrics})."""
    rows, raw = [], {}
    for c in cands:
        m = bootstrap_metrics(c.labels, c.probs, c.threshold, bootstrap_counts(c.labels, n_boot, seed))
        raw[c.label] = m
        rows.append(
            {
                "model": c.label,
                **{k.replace("_", " "): ci(*m[k]) for k in CI_METRICS},
                "test images": len(c.labels),
                "PNEUMONIA": int(c.labels.sum()),
            }
        )
    table = pd.DataFrame(rows).rename(columns=SHOWN)
    return table, raw


def arm_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Per (model, arm): mean [95% CI] of the test metrics (clipped to [0, 1]): test AUC's interval covers
    seeds and test images where predictions exist, the threshold metrics' seeds only."""
    arms = summary[summary["kind"] == "arm"] if len(summary) else summary
    rows = []
    for r in arms.to_dict("records"):
        row = {"model": r["model"], "arm": r["arm"], "seeds": r.get("n_seeds")}
        for m in CI_METRICS:
            lo, hi = r.get(f"test_{m}_ci_low"), r.get(f"test_{m}_ci_high")
            row[SHOWN.get(m, m)] = ci(r.get(f"test_{m}_mean"), _clip(lo), _clip(hi))
        rows.append(row)
    return pd.DataFrame(rows)


def _clip(x):
    return x if x is None or (isinstance(x, float) and math.isnan(x)) else float(min(max(x, 0.0), 1.0))


def verdict(r: dict) -> str:
    """A comparison in words: the summary's own wording (from p_holm and the ΔAUC interval), so the
    console, the report and the README say the same thing."""
    if isinstance(r.get("verdict"), str):
        return r["verdict"]
    from pneumo_ray.analysis.verdicts import verdict as words

    return words(r)


def verdicts(summary: pd.DataFrame) -> list[str]:
    if summary.empty:
        return []
    return [verdict(r) for r in summary[summary["kind"] == "vs_transfer"].to_dict("records")]


def audit_table(audit: pd.DataFrame) -> pd.DataFrame:
    """Per arm that pre-trains: the pre-training images against the target's sets."""
    if audit.empty or "a_set" not in audit:
        return pd.DataFrame()
    pre = audit[audit["a_set"] == "pretraining"]
    pre = pre[pre["b_set"] != "pretraining"]
    cols = [
        c
        for c in (
            "study",
            "arm",
            "b_set",
            "a_images",
            "by_name",
            "by_patient",
            "by_content",
            "any",
            "patients_shared",
            "content_label_conflicts",
        )
        if c in pre
    ]
    out = pre[cols].rename(columns={"b_set": "against", "a_images": "pre-training images"})
    if "study" in out and out["study"].nunique() < 2:
        out = out.drop(columns="study")
    return out.reset_index(drop=True)


def audit_sentences(audit: pd.DataFrame) -> list[str]:
    """'transfer: pre-trained on 2000 images; 0 share a name, patient or content with target-val/test'."""
    t = audit_table(audit)
    out = []
    if t.empty:
        return out
    for arm, g in t.groupby("arm", sort=False):
        held = g[g["against"].isin(["target-val", "target-test"])]
        n = int(g["pre-training images"].iloc[0])
        leaked = int(held["any"].sum()) if len(held) else 0
        sets = "/".join(s.replace("target-", "") for s in held["against"]) or "held-out"
        out.append(
            f"{arm}: pre-trained on {n} images; {leaked} share a file name, patient or content "
            f"with the target's {sets} set{'s' if len(held) > 1 else ''}"
        )
    return out


def ensemble_table(ens: pd.DataFrame) -> pd.DataFrame:
    """Per ensemble (ensemble.parquet): two rows, the ensemble and the best single trial (or seed) by
    validation AUC, each with validation AUC and the test metrics [95% bootstrap CI over the test
    images] at its fixed rule; the ensemble's row adds ΔAUC and DeLong's p for these two fixed models."""
    from pneumo_ray.report.inputs import ensemble_label

    rows = []
    for r in ens.to_dict("records"):
        members = json.loads(r["members"])
        counts = json.loads(r["counts"])
        what = "trial" if r.get("candidates", "trial_id") == "trial_id" else "seed"
        picked = ", ".join(f"{m}×{c}" if c > 1 else str(m) for m, c in zip(members, counts))
        for prefix, name, val in (
            ("test_", f"{ensemble_label(r)}: {picked}", r["val_auc"]),
            ("single_test_", f"best single {what} {r['best_single']}", r["best_single_val_auc"]),
        ):
            row = {"model": name, "val AUC": num(val, 4)}
            for m in CI_METRICS:
                key = f"{prefix}{m}"
                label = "test AUC" if m == "auc" else m.replace("_", " ")
                row[label] = ci(r.get(key), r.get(f"{key}_ci_low"), r.get(f"{key}_ci_high"))
            versus = f"{num(r['delong_auc_diff'], 4)} ({pval(r['p_delong'])})".replace("p=", "p = ")
            if int(r["k"]) == 1:
                versus = "the same model (validation chose it alone)"
            row["ΔAUC vs best single, DeLong"] = versus if prefix == "test_" else ""
            rows.append(row)
    return pd.DataFrame(rows)


def provenance_table(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """What made each table's rows (storage/provenance.py): one row per provenance column, one column
    per non-empty table ({"sweep trials": trials, "ablation seeds": ablations, …}); a value that differs
    between rows is listed with its row counts."""
    shown = {name: provenance.summary_of(t) for name, t in tables.items() if t is not None and not t.empty}
    if not shown:
        return pd.DataFrame()
    return pd.DataFrame(
        {"": list(provenance.COLUMNS), **{n: [s[c] for c in provenance.COLUMNS] for n, s in shown.items()}}
    )
