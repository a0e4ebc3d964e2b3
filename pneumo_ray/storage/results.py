"""Study results on disk: Parquet tables + run.json under <results>/<name>/ (schema: results/README.md).

Writes are atomic (temp file + rename) and idempotent: rows are keyed (a trial's rows replace
that trial's earlier rows), so re-collecting a resumed sweep never duplicates or loses a row.
`read_results` is the one reader that the ablation and report commands use.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pneumo_ray.storage.atomic import atomic_write

TABLES = {"trials": ["trial_id"], "epochs": ["trial_id", "epoch"], "predictions": ["trial_id", "path"]}


def upsert_parquet(path: Path, rows: pd.DataFrame, key: list[str]) -> pd.DataFrame:
    """Merge `rows` into the table at `path`: rows with the same key replace the old ones."""
    if path.exists():
        old = pd.read_parquet(path)
        if len(rows):
            keys = set(map(tuple, rows[key].astype(str).to_numpy()))
            old = old[[tuple(k) not in keys for k in old[key].astype(str).to_numpy()]]
        rows = pd.concat([old, rows], ignore_index=True) if len(old) else rows
    rows = rows.reset_index(drop=True)
    atomic_write(path, lambda p: rows.to_parquet(p, index=False))
    return rows


def read_table(out: Path, name: str) -> pd.DataFrame:
    """`<out>/<name>.parquet`, or an empty frame where it does not exist (yet)."""
    path = Path(out) / f"{name}.parquet"
    if not path.exists():
        return pd.DataFrame()
    try:
        return pd.read_parquet(path)
    # pyarrow's ArrowInvalid is a ValueError; pandas decoding a damaged schema (its JSON metadata) raises
    # KeyError or TypeError (seen on files with random bytes written into them)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"{path}: damaged or not a Parquet table ({str(e).splitlines()[0][:120]}); "
            "move it away and re-run the step that writes it"
        ) from e


def write_tables(out: Path, trials: list[dict], epochs: list[pd.DataFrame], preds: list[pd.DataFrame]) -> None:
    frames = dict(
        trials=pd.DataFrame(trials),
        epochs=pd.concat(epochs, ignore_index=True) if epochs else pd.DataFrame(),
        predictions=pd.concat(preds, ignore_index=True) if preds else pd.DataFrame(),
    )
    for name, frame in frames.items():
        if len(frame):
            upsert_parquet(out / f"{name}.parquet", frame, TABLES[name])


def git_commit(cwd: Path | None = None) -> str | None:
    try:
        where = cwd or Path(__file__).parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict:
    """Library versions and hardware, for run.json."""
    import importlib.metadata as md

    versions = {}
    for pkg in ("torch", "torchvision", "ray", "optuna", "numpy", "pandas", "pyarrow", "safetensors"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    hw = dict(
        platform=platform.platform(), machine=platform.machine(), cpus=os.cpu_count(), python=sys.version.split()[0]
    )
    try:
        import torch

        hw["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - hardware facts are best effort
        hw["cuda_devices"] = []
    return dict(versions=versions, hardware=hw)


def command_line() -> str:
    """The command as the user typed it, to run again: `python -m study.sweep --flags …` (sys.argv[0] of
    `python -m pkg.mod` is the module's file path, so the module is named from `__main__.__spec__`)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    head = ["python", "-m", spec.name] if spec is not None and spec.name else ["python", sys.argv[0]]
    return shlex.join([*head, *sys.argv[1:]])


def write_run_json(out: Path, **fields: object) -> None:
    info = dict(argv=sys.argv, command=command_line(), git_commit=git_commit(), **environment(), **fields)
    atomic_write(out / "run.json", lambda p: p.write_text(json.dumps(info, indent=2, default=str)))


@dataclass
class Results:
    path: Path
    run: dict
    trials: pd.DataFrame
    epochs: pd.DataFrame
    predictions: pd.DataFrame

    def best_trials(self) -> pd.DataFrame:
        """Best trial per model by validation AUC (never by test); a tie goes to the first trial id, as
        in the ensemble's first pick (analysis/ensemble.py) and an arm's tuning (replicates.best_tuned)."""
        t = self.trials.dropna(subset=["best_val_auc"]).sort_values("trial_id", kind="stable")
        return t.loc[t.groupby("model")["best_val_auc"].idxmax()].reset_index(drop=True)


def read_results(path: str | os.PathLike) -> Results:
    """Read a sweep folder; missing tables come back empty (with a clear error if nothing is there)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such results folder")
    tables = {name: read_table(path, name) for name in TABLES}
    run = json.loads((path / "run.json").read_text()) if (path / "run.json").exists() else {}
    if not run and all(t.empty for t in tables.values()):
        raise FileNotFoundError(f"{path}: no run.json and no trials/epochs/predictions.parquet")
    return Results(path, run, tables["trials"], tables["epochs"], tables["predictions"])


def write_audit(out: Path, pairs: pd.DataFrame, summary: pd.DataFrame) -> None:
    """The leakage audit's tables (replaced as a whole: an audit describes the data as it is now)."""
    out.mkdir(parents=True, exist_ok=True)
    for name, frame in (("audit", pairs), ("audit_summary", summary)):
        atomic_write(out / f"{name}.parquet", lambda p, f=frame: f.to_parquet(p, index=False))
