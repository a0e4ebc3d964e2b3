"""The report's inputs: result folders (sweeps and ablations) read into one `ReportData`, and the
"candidates" whose test predictions the model-comparison figures draw. Reads only Parquet files and
run.json. A gap (a table not written yet) becomes a plain-language note; a file that cannot be used
(truncated, not Parquet or JSON, without the columns or keys the report reads) becomes a `Damaged`
record, and the report leaves out only what needs that file; a path that is no results folder at all
is a UserError.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pneumo_ray.config.errors import UserError
from pneumo_ray.storage.results import TABLES, Results, read_table

ABLATION_TABLES = ("ablations", "ablation_predictions", "ablation_summary", "audit_summary")
ENSEMBLE_TABLES = ("ensemble", "ensemble_predictions")  # a sweep's or an ablation's (study.ensemble)

# The columns the report reads from each table (a table without them is damaged for the report), and
# those of them that must hold numbers.
COLUMNS = {
    "trials": ("trial_id", "model", "best_val_auc"),
    "epochs": ("trial_id", "epoch"),
    "predictions": ("trial_id", "path", "label", "probability"),
    "ablations": ("arm", "model", "seed", "val_auc"),
    "ablation_predictions": ("arm", "model", "seed", "path", "label", "probability"),
    "ablation_summary": ("kind", "model", "arm"),
    "audit_summary": ("arm", "a_set", "b_set"),
    "ensemble": ("model", "k", "members", "best_single"),
    "ensemble_predictions": ("model", "path", "label", "probability"),
}
NUMERIC = {"best_val_auc", "epoch", "seed", "val_auc", "label", "probability"}

# What the report cannot show without each file ("run": run.json).
NEEDED_FOR = {
    "trials": "the sweep's best configurations, its models on test, learning curves and sweep insight",
    "epochs": "the learning curves",
    "predictions": "the sweep's models on test (metrics, ROC, precision-recall, confusion, calibration) and the "
    "test images",
    "ablations": "the ablation's per-seed rows (the arm metrics' dots; without ablation_summary.parquet, "
    "the ablation section)",
    "ablation_predictions": "the ablation arms' test predictions (the model comparison when there is no sweep; "
    "recomputing a missing ablation summary)",
    "ablation_summary": "the ablation summary as study.ablate wrote it (recomputed from the ablation's tables "
    "where they are readable)",
    "audit_summary": "the leakage audit of the pre-training images",
    "ensemble": "the ensemble chosen on validation",
    "ensemble_predictions": "the ensemble chosen on validation",
    "run": "the run's settings: the test images and Grad-CAM (where the data are), the status and search ranges",
}


@dataclass(frozen=True)
class Damaged:
    """A file the report cannot use: which, why, how to get it back, and what is left out without it."""

    path: Path
    table: str  # a key of COLUMNS, or "run" for run.json
    reason: str
    needed_for: str = ""

    @property
    def folder(self) -> str:
        return self.path.parent.name

    def remedy(self) -> str:
        folder, where = self.path.parent, f"--results {self.path.parent.parent} --name {self.path.parent.name}"
        if self.table in TABLES:
            return (
                f"move it away and rerun `python -m study.sweep {where} --resume` to collect it again from "
                "Ray's storage, or restore it from a copy"
            )
        if self.table == "ablation_summary":
            return f"rerun `python -m study.ablate --summarize {folder}` to rewrite it, or restore it from a copy"
        if self.table in ENSEMBLE_TABLES:
            return f"rerun `python -m study.ensemble {folder}` to rebuild it (no training), or restore it from a copy"
        if self.table == "run":
            return "restore it from a copy (study.sweep and study.ablate write it when a run starts and ends)"
        if self.table == "audit_summary":
            return "restore it from a copy (study.ablate writes it when an arm runs seeds it lacks)"
        return (
            f"restore it from a copy, or move it away and rerun the arms with `python -m study.ablate {where} …` "
            "(their seeds train again)"
        )

    def __str__(self) -> str:
        return (
            f"{self.path} is damaged ({self.reason}); {self.remedy()}. Not shown without it: "
            f"{self.needed_for or NEEDED_FOR[self.table]}"
        )


@dataclass
class ReportData:
    folders: list[Path]
    sweep: Results | None  # all sweep folders together (trial ids are unique)
    sweep_runs: dict[str, dict]  # folder name -> run.json
    ablation: dict[str, pd.DataFrame]  # ABLATION_TABLES (empty frames where absent)
    ablation_runs: dict[str, dict]
    notes: list[str] = field(default_factory=list)
    damaged: list[Damaged] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # folders that hold no results yet, and why
    ensembles: dict[str, pd.DataFrame] = field(default_factory=dict)  # ENSEMBLE_TABLES of every folder

    def damaged_in(self, tables: Iterable[str], folder: str | None = None) -> list[Damaged]:
        """The damaged files among `tables` (of `folder`, by name, if given)."""
        tables = set(tables)
        return [d for d in self.damaged if d.table in tables and folder in (None, d.folder)]

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
    row: dict  # its trials / ablations row (an ensemble's: its ensemble.parquet row)
    ensemble: bool = False  # an ensemble chosen on validation: probs = sigmoid(score), threshold 0.5


def check_results_folder(folder: Path) -> None:
    """UserError unless `folder` is a folder that study.sweep or study.ablate wrote into."""
    hint = "give a results folder that study.sweep or study.ablate wrote (results/<name>)"
    if not folder.exists():
        raise UserError(f"{folder}: no such results folder; {hint}")
    if not folder.is_dir():
        raise UserError(f"{folder}: a file, not a results folder; give the folder that holds it ({folder.parent})")
    names = ["run.json", *(f"{t}.parquet" for t in (*TABLES, *ABLATION_TABLES))]
    if not any((folder / n).exists() for n in names):
        raise UserError(
            f"{folder}: not a results folder (no run.json, trials.parquet, ablations.parquet or the other "
            f"tables); {hint}"
        )


def load_report_data(folders: Iterable[str | os.PathLike]) -> ReportData:
    """Read every folder (UserError for one that is not a results folder). A damaged file is recorded
    and read as absent; a folder with no results yet is noted and skipped."""
    folders = [Path(f) for f in folders]
    for f in folders:
        check_results_folder(f)
    notes, skipped, damaged, sweeps, sweep_runs, abl_runs = [], [], [], [], {}, {}
    abl: dict[str, list[pd.DataFrame]] = {t: [] for t in ABLATION_TABLES}
    for f in folders:
        has_run = (f / "run.json").exists()
        is_sweep = (f / "trials.parquet").exists() or (f / "predictions.parquet").exists()
        is_ablation = any((f / f"{t}.parquet").exists() for t in ABLATION_TABLES[:3])
        run = read_run(f, damaged, check_keys=is_sweep or is_ablation)
        if is_sweep:
            tables = {name: read_checked(f, name, damaged) for name in TABLES}
            sweeps.append(Results(f, run, tables["trials"], tables["epochs"], tables["predictions"]))
            sweep_runs[f.name] = run
            if run.get("status") not in (None, "finished"):
                notes.append(f"{f}: the sweep's status is {run['status']!r}, not finished: its results may be partial")
            if not (f / "trials.parquet").exists():
                notes.append(f"{f}: no trials.parquet (the sweep has not collected any trial yet)")
                skipped.append(f"{f} has no trials.parquet yet (the sweep has not collected a trial)")
        if is_ablation:
            abl_runs[f.name] = run
            for t in ABLATION_TABLES:
                frame = read_checked(f, t, damaged)
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
            skipped.append(f"{f} holds {what}, no trials.parquet or ablations.parquet yet")
    ensembles = {t: _ensemble_table(folders, t, damaged) for t in ENSEMBLE_TABLES}
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
    if not abl_runs:
        notes.append("no ablation folder (ablations.parquet) given: the ablation section is skipped")
    return ReportData(folders, sweep, sweep_runs, ablation, abl_runs, notes, damaged, skipped, ensembles)


def _ensemble_table(folders: list[Path], table: str, damaged: list[Damaged]) -> pd.DataFrame:
    """One ensemble table of every folder that has it, with the folder's name (`study`)."""
    frames = [
        read_checked(f, table, damaged).assign(study=f.name) for f in folders if (f / f"{table}.parquet").exists()
    ]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _why(path: Path, e: BaseException, what: str) -> str:
    """Why a file cannot be read, in a few words: "an empty file", or `what` and the first sentence of
    the reader's message (without the path, which the warning names already)."""
    try:
        if path.stat().st_size == 0:
            return "an empty file, 0 bytes"
    except OSError:
        pass
    text = str(e.__cause__ or e).strip()
    text = re.sub(r"^Could not open Parquet input source '[^']*': ", "", text.splitlines()[0] if text else "")
    text = re.split(r"(?<=[a-z])\. ", text)[0].replace(str(path), path.name)[:160]
    return f"{what}: {text}" if text else what


def read_checked(folder: Path, table: str, damaged: list[Damaged]) -> pd.DataFrame:
    """`<folder>/<table>.parquet`, or an empty frame if it is absent, or damaged (recorded in `damaged`):
    unreadable, or without the columns the report reads, or with text where they hold numbers."""
    path = folder / f"{table}.parquet"
    try:
        frame = read_table(folder, table)  # ValueError naming the path for a file that is not Parquet
    except ValueError as e:
        damaged.append(Damaged(path, table, _why(path, e, "not a readable Parquet table")))
        return pd.DataFrame()
    if frame.empty and not len(frame.columns):
        return frame
    missing = [c for c in COLUMNS[table] if c not in frame]
    if missing:
        damaged.append(Damaged(path, table, f"no column {', '.join(missing)}: not the table the study writes"))
        return pd.DataFrame()
    for c in COLUMNS[table]:
        col = frame[c]
        if c in NUMERIC and not pd.api.types.is_numeric_dtype(col) and not col.isna().all():
            damaged.append(Damaged(path, table, f"column {c} holds {col.dtype} values, not numbers"))
            return pd.DataFrame()
    return frame


def read_run(folder: Path, damaged: list[Damaged], check_keys: bool = True) -> dict:
    """<folder>/run.json, or {} where it is absent or damaged (recorded in `damaged`): not JSON, not
    an object, or (with `check_keys`) without the data location the test images need. A known key
    that does not hold an object is dropped and recorded."""
    path = folder / "run.json"
    if not path.exists():
        return {}
    try:
        run = json.loads(path.read_text())
    except UnicodeDecodeError as e:
        damaged.append(Damaged(path, "run", _why(path, e, "not text")))
        return {}
    except (OSError, ValueError) as e:  # truncated or not JSON (JSONDecodeError is a ValueError)
        damaged.append(Damaged(path, "run", _why(path, e, "not valid JSON")))
        return {}
    if not isinstance(run, dict):
        kind = {list: "an array", str: "a string", bool: "true or false", type(None): "null"}.get(type(run), "a number")
        damaged.append(Damaged(path, "run", f"{kind}, not a JSON object"))
        return {}
    bad = [k for k in ("sweep", "args", "settings") if k in run and not isinstance(run[k], dict)]
    if bad:
        run = {k: v for k, v in run.items() if k not in bad}
        what = ", ".join(bad)
        damaged.append(Damaged(path, "run", f"{what} {'is' if len(bad) == 1 else 'are'} not a JSON object"))
    elif check_keys and not any("data_root" in run.get(k, {}) for k in ("args", "settings")):
        damaged.append(
            Damaged(
                path,
                "run",
                "no data_root under args or settings",
                "the test images and Grad-CAM (where the run's data are is unknown)",
            )
        )
    return run


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


def folder_of(row: dict) -> str | None:
    """The name of the results folder a trial or ablation row was read from."""
    return row.get("sweep", row.get("study"))


def nothing_to_report(data: ReportData) -> str | None:
    """None if the folders hold something to show (a finished sweep trial, or an ablation summary or
    the tables to compute it); else the one-line reason, naming each damaged file."""
    abl = data.ablation
    if data.has_sweep and not finished_trials(data.sweep.trials).empty:
        return None
    if not abl["ablation_summary"].empty or not (abl["ablations"].empty or abl["ablation_predictions"].empty):
        return None
    why = [f"{d.path} is damaged ({d.reason}): {d.remedy()}" for d in data.damaged if d.table != "run"]
    if data.has_sweep:
        why.append(
            f"none of the {len(data.sweep.trials)} trial(s) in trials.parquet has a validation AUC (they failed: "
            "see its error column)"
        )
    if not abl["ablations"].empty:
        why.append("ablations.parquet has rows, but no ablation_summary.parquet or ablation_predictions.parquet")
    why += data.skipped
    return "nothing to report: " + ("; ".join(why) or f"no results in {', '.join(map(str, data.folders))}")


def run_of(data: ReportData, row: dict, kind: str) -> dict:
    runs = data.sweep_runs if kind == "sweep" else data.ablation_runs
    key = folder_of(row)
    return runs[key] if key in runs else next(iter(runs.values()), {})


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


def candidates(data: ReportData, notes: list[str], problems: list[str] | None = None) -> list[Candidate]:
    """The sweep's best trial per model (by validation AUC); without a sweep, each ablation arm's
    best-validation seed per model. A gap goes to `notes`; predictions that cannot be drawn (labels
    other than 0/1, probabilities outside [0, 1]) to `problems` (default: `notes`)."""
    problems = notes if problems is None else problems
    out = []
    if data.has_sweep:
        best = data.sweep.best_trials()
        preds = data.sweep.predictions
        for row in best.to_dict("records"):
            p = preds[preds["trial_id"] == row["trial_id"]] if len(preds) else preds
            if p.empty:
                if not data.damaged_in(["predictions"], folder_of(row)):  # else already said
                    notes.append(
                        f"{row['model']}: best trial {row['trial_id']} has no rows in predictions.parquet "
                        "(its test evaluation did not finish): left out of the model comparison"
                    )
                continue
            if _unusable(p, f"{row['model']} (best trial {row['trial_id']})", data, row, "predictions", problems):
                continue
            out.append(_candidate(row["model"], row["model"], p, _threshold(row, p), row, run_of(data, row, "sweep")))
        if best.empty:
            notes.append("the sweep has no finished trial (no validation AUC): no model comparison")
        return out + ensemble_candidates(data, problems)
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
        label = f"{model} · {arm} (seed {row['seed']})"
        if _unusable(p, label, data, row, "ablation_predictions", problems):
            continue
        out.append(_candidate(label, model, p, _threshold(row, p), row, run_of(data, row, "ablation")))
    return out + ensemble_candidates(data, problems)


def ensemble_label(row: dict) -> str:
    """'cnn ensemble (K = 3: 2 trials)', or with the arm of an ablation."""
    who = row["model"] if row.get("arm") is None else f"{row['model']} · {row['arm']}"
    what = "trial" if row.get("candidates", "trial_id") == "trial_id" else "seed"
    n = int(row["n_members"])
    return f"{who} ensemble (K = {int(row['k'])}: {n} {what}{'' if n == 1 else 's'})"


def ensemble_candidates(data: ReportData, problems: list[str]) -> list[Candidate]:
    """Each ensemble of the folders (ensemble.parquet) as a model on test, beside the single models."""
    ens, preds = data.ensembles.get("ensemble", pd.DataFrame()), data.ensembles.get("ensemble_predictions")
    out = []
    if ens.empty or preds is None or preds.empty:
        return out
    for row in ens.to_dict("records"):
        arm = row.get("arm")
        p = preds[(preds["study"] == row["study"]) & (preds["model"] == row["model"])]
        if "arm" in p:
            p = p[p["arm"].isna()] if arm is None else p[p["arm"] == arm]
        label = ensemble_label(row)
        if p.empty or _unusable(p, label, data, {"study": row["study"]}, "ensemble_predictions", problems):
            continue
        run = data.sweep_runs.get(row["study"]) or data.ablation_runs.get(row["study"]) or {}
        c = _candidate(label, row["model"], p, 0.5, row, run)
        c.ensemble = True
        out.append(c)
    return out


def _unusable(p: pd.DataFrame, label: str, data: ReportData, row: dict, table: str, problems: list[str]) -> bool:
    """Say (in `problems`) and return True if these test predictions cannot be drawn."""
    y, s = p["label"], p["probability"].to_numpy(float)
    if not y.isin([0, 1]).all():
        why = f"{int((~y.isin([0, 1])).sum())} label(s) other than 0 (NORMAL) or 1 (PNEUMONIA)"
    elif (bad := ~(np.isfinite(s) & (s >= 0) & (s <= 1))).any():
        why = f"{int(bad.sum())} probability value(s) that are not numbers from 0 to 1"
    elif y.nunique() < 2:
        why = "test labels of one class only (no ROC curve or AUC)"
    else:
        return False
    where = next((f / f"{table}.parquet" for f in data.folders if f.name == folder_of(row)), f"{table}.parquet")
    problems.append(
        f"{label}: its rows in {where} hold {why}; that file is damaged or was edited: rerun the step that "
        "writes it or restore it from a copy. Not shown: this model in the comparison on test"
    )
    return True


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
    known = "data_root" in where or "data_root" in settings  # None there: the synthetic phantoms
    return dict(data_root=root, image_size=int(size) if size else None, cache_dir=where.get("cache_dir"), known=known)
