"""Two runs of the same study.ablate command, side by side (issue 23): do they give the same numbers?

  python bench/compare_runs.py results/real-tuned-1 results/real-tuned-2

Per (arm, model, seed) of ablations.parquet: validation AUC, test AUC, accuracy, sensitivity,
specificity and the threshold of both runs and their difference, and the largest difference of the
test probabilities over the 624 images (ablation_predictions.parquet); per tuning trial of
ablation_tuning.parquet (matched by arm, model and its searched values: a seeded TPE proposes the same
configurations), the best validation AUC where both ran the same number of epochs (asynchronous ASHA
may stop another trial); the provenance columns in which the runs differ. Exit status 0 when every
compared number is identical, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pneumo_ray.config.search import SEARCHED  # noqa: E402
from pneumo_ray.storage import provenance  # noqa: E402

KEY = ["arm", "model", "seed"]
METRICS = ["val_auc", "test_auc", "test_accuracy", "test_sensitivity", "test_specificity", "test_threshold"]


def seeds(a: Path, b: Path) -> tuple[pd.DataFrame, float]:
    """Per seed of both runs: each metric of each run and the difference; the largest difference."""
    ra, rb = (pd.read_parquet(f / "ablations.parquet") for f in (a, b))
    both = ra.merge(rb, on=KEY, suffixes=("_1", "_2"))
    rows, worst = [], 0.0
    pa, pb = (pd.read_parquet(f / "ablation_predictions.parquet") for f in (a, b))
    probs = pa.merge(pb, on=[*KEY, "path"], suffixes=("_1", "_2"))
    probs["d"] = (probs.probability_1 - probs.probability_2).abs()
    per_seed = probs.groupby(KEY)["d"].max()
    for _, r in both.sort_values(KEY).iterrows():
        row = {k: r[k] for k in KEY}
        for m in METRICS:
            row[m] = f"{r[m + '_1']:.5f} / {r[m + '_2']:.5f}"
            worst = max(worst, abs(r[m + "_1"] - r[m + "_2"]))
        row["largest |Δ probability|"] = per_seed.get(tuple(r[k] for k in KEY), np.nan)
        worst = max(worst, float(np.nan_to_num(row["largest |Δ probability|"])))
        rows.append(row)
    return pd.DataFrame(rows), worst


def tuning(a: Path, b: Path) -> tuple[pd.DataFrame, float]:
    """Tuning trials matched by arm, model and searched values (rounded to 12 digits); none where a run
    has no search (an ablation --from a sweep or with the defaults)."""
    paths = [f / "ablation_tuning.parquet" for f in (a, b)]
    if not all(p.is_file() for p in paths):
        print(f"note: no tuning trials compared ({', '.join(str(p) for p in paths if not p.is_file())} missing)")
        return pd.DataFrame(), 0.0
    ta, tb = (pd.read_parquet(p) for p in paths)
    if ta.empty or tb.empty:
        return pd.DataFrame(), 0.0
    searched = [c for c in SEARCHED if c in ta and c in tb]
    for t in (ta, tb):
        for c in searched:
            t[c + "_r"] = t[c].round(12)
    on = ["arm", "model", *(c + "_r" for c in searched)]
    both = ta.merge(tb, on=on, suffixes=("_1", "_2"))
    same = both[both.epochs_run_1 == both.epochs_run_2]
    worst = float((same.best_val_auc_1 - same.best_val_auc_2).abs().max()) if len(same) else 0.0
    cols = ["arm", "model", *(c + "_1" for c in searched), "epochs_run_1", "epochs_run_2"]
    out = both[cols + ["best_val_auc_1", "best_val_auc_2"]].copy()
    out["|Δ| (same epochs)"] = np.where(
        both.epochs_run_1 == both.epochs_run_2, (both.best_val_auc_1 - both.best_val_auc_2).abs(), np.nan
    )
    unmatched = len(ta) + len(tb) - 2 * len(both)
    if unmatched:
        print(f"note: {unmatched} tuning trial(s) have no twin with the same configuration in the other run")
    return out, worst


def conditions(a: Path, b: Path) -> list[str]:
    ra, rb = (pd.read_parquet(f / "ablations.parquet") for f in (a, b))
    lines = []
    for col in provenance.CONDITION_COLUMNS:
        va = sorted(map(str, ra[col].unique())) if col in ra else ["–"]
        vb = sorted(map(str, rb[col].unique())) if col in rb else ["–"]
        if va != vb:
            lines.append(f"{col}: {', '.join(va)} / {', '.join(vb)}")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("first", type=Path)
    p.add_argument("second", type=Path)
    args = p.parse_args()
    for folder in (args.first, args.second):
        for table in ("ablations", "ablation_predictions"):
            if not (folder / f"{table}.parquet").is_file():
                print(f"error: {folder}: no {table}.parquet; give two finished study.ablate folders", file=sys.stderr)
                return 2
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 30)
    table, worst_seed = seeds(args.first, args.second)
    print(f"per seed ({args.first.name} / {args.second.name}):")
    print(table.to_string(index=False))
    trials, worst_tuning = tuning(args.first, args.second)
    if len(trials):
        print("\ntuning trials (best validation AUC):")
        print(trials.to_string(index=False, float_format=lambda v: f"{v:.6g}"))
    diff = conditions(args.first, args.second)
    print("\nprovenance that differs between the runs: " + ("; ".join(diff) if diff else "none"))
    worst = max(worst_seed, worst_tuning)
    print("identical" if worst == 0 else f"largest difference {worst:.3g}")
    return 0 if worst == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
