"""The report's inputs: result folders (sweeps and ablations) read into one `ReportData`, and the
"candidates" whose test predictions the model-comparison figures draw. Reads only Parquet files and
run.json; every gap becomes a plain-language note instead of an error."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pneumo_ray.storage.results import Results, read_results, read_table

ABLATION_TABLES = ("ablations", "ablation_predictions", "ablation_summary", "audit_summary")


@dataclass
class ReportData:
    folders: list[Path]
    sweep: Results | None  # all sweep folders together (trial ids are unique)
    sweep_runs: dict[str, dict]  # folder name -> run.json
    ablation: dict[str, pd.DataFrame]  # ABLATION_TABLES (empty frames where absent)
    ablation_runs: dict[str, dict]
    notes: list[str] = field(default_factory=list)

    @property
    def has_sweep(self) -> bool:
        return self.sweep is not None and not self.sweep.trials.empty

    @property
    def has_ablation(self) -> bool:
        return not self.ablation["ablations"].empty or not self.ablation["ablation_summary"].empty


@dataclass
class Candidate:
    """One model's test predictions at its decision threshold (a sweep's best trial, or an
    ablation arm's best-validation seed)."""

    label: str
    model: str
    labels: np.ndarray
    probs: np.ndarray
    paths: np.ndarray
    names: np.ndarray
    threshold: float
    checkpoint: str | None
    run: dict  # run.json of its folder: where the data and settings are
    row: dict  # its trials / ablations row


def load_report_data(folders: Iterable[str | os.PathLike]) -> ReportData:
    """Read every folder; a folder that is neither a sweep nor an ablation is noted and skipped."""
    folders = [Path(f) for f in folders]
    notes, sweeps, sweep_runs, abl_runs = [], [], {}, {}
    abl: dict[str, list[pd.DataFrame]] = {t: [] for t in ABLATION_TABLES}
    for f in folders:
        if not f.is_dir():
            notes.append(f"{f}: no such folder (skipped)")
            continue
        has_run = (f / "run.json").exists()
        run = json.loads((f / "run.json").read_text()) if has_run else {}
        is_sweep = (f / "trials.parquet").exists() or (f / "predictions.parquet").exists()
        is_ablation = any((f / f"{t}.parquet").exists() for t in ABLATION_TABLES[:3])
        if is_sweep:
            sweeps.append(read_results(f))
            sweep_runs[f.name] = run
            if run.get("status") not in (None, "finished"):
                notes.append(f"{f}: the sweep's status is {run['status']!r}, not finished: its results may be partial")
            if not (f / "trials.parquet").exists():
                notes.append(f"{f}: no trials.parquet (the sweep has not collected any trial yet)")
        if is_ablation:
            abl_runs[f.name] = run
            for t in ABLATION_TABLES:
                frame = read_table(f, t)
                if len(frame):
                    frame.insert(0, "study", f.name)
                abl[t].append(frame)
            missing = [t for t in ABLATION_TABLES if not (f / f"{t}.parquet").exists()]
            if missing:
                notes.append(f"{f}: ablation folder without {', '.join(m + '.parquet' for m in missing)}")
        if (is_sweep or is_ablation) and not has_run:
            notes.append(f"{f}: no run.json (the run's settings and data location are unknown)")
        if not is_sweep and not is_ablation:
            what = "only run.json" if has_run else "no run.json and no result tables"
            notes.append(
                f"{f}: {what} (neither trials.parquet nor ablations.parquet: not a finished sweep or ablation)"
            )
    sweep = _combine_sweeps(sweeps) if sweeps else None
    ablation = {
        t: pd.concat([x for x in frames if len(x)], ignore_index=True)
        if any(len(x) for x in frames)
        else pd.DataFrame()
        for t, frames in abl.items()
    }
    if len(abl_runs) > 1:  # arms of different studies must stay apart: prefix them with the study
        for frame in ablation.values():
            if "arm" in frame:
                frame["arm"] = frame["study"] + ": " + frame["arm"]
    if sweep is None:
        notes.append("no sweep folder (trials.parquet) given: the learning curves and sweep insight are skipped")
    if ablation["ablations"].empty and ablation["ablation_summary"].empty:
        notes.append("no ablation folder (ablations.parquet) given: the ablation section is skipped")
    return ReportData(folders, sweep, sweep_runs, ablation, abl_runs, notes)


def _combine_sweeps(sweeps: list[Results]) -> Results:
    if len(sweeps) == 1:
        r = sweeps[0]
        r.trials = r.trials.assign(sweep=r.path.name) if len(r.trials) else r.trials
        return r
    frames = {}
    for name in ("trials", "epochs", "predictions"):
        parts = [getattr(r, name).assign(sweep=r.path.name) for r in sweeps if len(getattr(r, name))]
        frames[name] = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    return Results(sweeps[0].path, sweeps[0].run, frames["trials"], frames["epochs"], frames["predictions"])


def finished_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials with a validation AUC (failed ones have none), in the order the sweep recorded them."""
    if trials.empty or "best_val_auc" not in trials:
        return trials.iloc[0:0]
    return trials[trials["best_val_auc"].notna()].reset_index(drop=True)


def run_of(data: ReportData, row: dict, kind: str) -> dict:
    runs = data.sweep_runs if kind == "sweep" else data.ablation_runs
    key = row.get("sweep" if kind == "sweep" else "study")
    return runs.get(key) or next(iter(runs.values()), {})


def _candidate(label, model, preds: pd.DataFrame, threshold, row, run) -> Candidate:
    p = preds.sort_values("path")
    return Candidate(
        label,
        model,
        p["label"].to_numpy(int),
        p["probability"].to_numpy(float),
        p["path"].to_numpy(str),
        p["name"].to_numpy(str) if "name" in p else p["path"].to_numpy(str),
        float(threshold),
        row.get("checkpoint_path"),
        run,
        row,
    )


def candidates(data: ReportData, notes: list[str]) -> list[Candidate]:
    """The sweep's best trial per model (by validation AUC); without a sweep, each ablation arm's
    best-validation seed per model."""
    out = []
    if data.has_sweep:
        best = data.sweep.best_trials()
        preds = data.sweep.predictions
        for row in best.to_dict("records"):
            p = preds[preds["trial_id"] == row["trial_id"]] if len(preds) else preds
            if p.empty:
                notes.append(
                    f"{row['model']}: best trial {row['trial_id']} has no rows in predictions.parquet "
                    "(its test evaluation did not finish): left out of the model comparison"
                )
                continue
            out.append(_candidate(row["model"], row["model"], p, _threshold(row, p), row, run_of(data, row, "sweep")))
        if best.empty:
            notes.append("the sweep has no finished trial (no validation AUC): no model comparison")
        return out
    abl, preds = data.ablation["ablations"], data.ablation["ablation_predictions"]
    if abl.empty or preds.empty:
        return out
    ok = abl[abl["error"].isna() & abl["val_auc"].notna()] if "error" in abl else abl[abl["val_auc"].notna()]
    for (model, arm), g in ok.groupby(["model", "arm"], sort=True):
        row = g.loc[g["val_auc"].idxmax()].to_dict()
        p = preds[(preds.model == model) & (preds.arm == arm) & (preds.seed == row["seed"])]
        if p.empty:
            notes.append(f"{model}/{arm} seed {row['seed']}: no test predictions")
            continue
        out.append(
            _candidate(
                f"{model} · {arm} (seed {row['seed']})",
                model,
                p,
                _threshold(row, p),
                row,
                run_of(data, row, "ablation"),
            )
        )
    return out


def _threshold(row: dict, preds: pd.DataFrame) -> float:
    """The recorded decision threshold (the loss rule); else the smallest probability predicted positive."""
    t = row.get("test_threshold")
    if t is not None and np.isfinite(t):
        return float(t)
    pos = preds.loc[preds["prediction"] == 1, "probability"]
    return float(pos.min()) if len(pos) else 0.5


def data_settings(run: dict, row: dict) -> dict:
    """Where the run's test images are: data_root (None = synthetic phantoms), image size, cache."""
    # "args": where the drivers record the data roots and cache (distributed/sweep.py run_record)
    sweep, settings, where = run.get("sweep", {}), run.get("settings", {}), run.get("args", {})
    size = sweep.get("image_size") or settings.get("image_size") or row.get("image_size")
    if size is None and isinstance(row.get("config"), str):
        size = json.loads(row["config"]).get("image_size")
    root = where.get("data_root", settings.get("data_root"))
    return dict(
        data_root=root, image_size=int(size) if size else None, cache_dir=where.get("cache_dir"), known=bool(run)
    )
