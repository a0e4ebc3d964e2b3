"""What made a result row: the provenance columns of trials.parquet, ablations.parquet and
ablation_tuning.parquet, and run.json's `provenance`.

Two halves. The driver's (`run_provenance`, once per invocation): the code commit and whether the
tree was dirty, the hash of requirements.txt, the Ray / Optuna / torch versions, the target data's
manifest hash. The worker's (`worker_columns`, from conditions.training_conditions in the process
that trained): torch version, device and GPU name, torch threads, CPU model and kernel family, augmentation
path, the training code's digest, and the pre-training key and whether this row computed it or
reused it. `stamp` puts the driver's half on rows that carry the worker's; `differing` finds the
conditions that differ between the rows of one table (study.ablate --summarize warns, one line each).
No torch, no Ray: the report and the summary read these without either.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import subprocess
from pathlib import Path

import pandas as pd

from pneumo_ray.config.train import stable_id

REPO = Path(__file__).resolve().parents[2]

RUN_COLUMNS = (
    "code_commit",
    "code_dirty",
    "requirements_sha256",
    "ray_version",
    "optuna_version",
    "data_manifest_hash",
)
# condition → column, from conditions.training_conditions of the process that trained
WORKER_COLUMNS = {
    "torch": "torch_version",
    "numpy": "numpy_version",
    "device": "device",
    "gpu": "gpu_name",
    "threads": "torch_threads",
    "cpu": "cpu_model",
    "cpu_capability": "cpu_capability",
    "augment": "augment_path",
    "code": "train_code",
}
PRETRAIN_COLUMNS = ("pretrain_key", "pretrain_computed")
# the columns whose values should be one per table: rows that differ in them were made differently
CONDITION_COLUMNS = (*RUN_COLUMNS, *WORKER_COLUMNS.values())
COLUMNS = (*CONDITION_COLUMNS, *PRETRAIN_COLUMNS)


def _git(*args: str, cwd: Path = REPO) -> str | None:
    try:
        r = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def code_state(repo: Path = REPO) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the code: dirty when a tracked file differs from the commit or an untracked
    file sits in the library or the commands (pneumo_ray/, study/). (None, None) outside a git
    checkout (a Ray job's uploaded working directory has no .git)."""
    commit = _git("rev-parse", "HEAD", cwd=repo)
    if commit is None:
        return None, None
    tracked = _git("status", "--porcelain", "--untracked-files=no", cwd=repo)
    untracked = _git("status", "--porcelain", "--untracked-files=all", "--", "pneumo_ray", "study", cwd=repo)
    return commit, bool(tracked) or any(line.startswith("??") for line in (untracked or "").splitlines())


def requirements_sha256(repo: Path = REPO) -> str | None:
    """SHA-256 (16 hex digits) of requirements.txt, or None where it is absent."""
    path = repo / "requirements.txt"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.exists() else None


def _version(pkg: str) -> str | None:
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return None


def target_manifest_hash(data_info: dict) -> str | None:
    """One hash of the target's train, validation and test manifests (names, labels, splits), as
    load_study_data recorded them; the pre-training source's is part of the pre-training key."""
    parts = [data_info.get(f"{s}_manifest_hash") for s in ("train", "val", "test")]
    return stable_id(parts, 16) if all(parts) else None


def run_provenance(data_info: dict, repo: Path = REPO) -> dict:
    """The driver's half of the provenance columns (RUN_COLUMNS), plus the driver's torch version for
    run.json (the rows carry the training process's own)."""
    commit, dirty = code_state(repo)
    return dict(
        code_commit=commit,
        code_dirty=dirty,
        requirements_sha256=requirements_sha256(repo),
        ray_version=_version("ray"),
        optuna_version=_version("optuna"),
        data_manifest_hash=target_manifest_hash(data_info),
        driver_torch_version=_version("torch"),
    )


def worker_columns(conditions: dict) -> dict:
    """The worker's half of the provenance columns from its training conditions."""
    return {column: conditions.get(cond) for cond, column in WORKER_COLUMNS.items()}


def from_report(metrics: dict) -> dict:
    """The worker's half as a trial reported it (its last result), for a row: the conditions and the
    pre-training key and whether this trial computed it (None for a row that did not pre-train)."""
    return {k: metrics.get(k) for k in (*WORKER_COLUMNS.values(), *PRETRAIN_COLUMNS)}


def stamp(rows: list[dict], run: dict) -> list[dict]:
    """`rows` with the driver's half of the provenance (RUN_COLUMNS of `run`) added to each."""
    return [{**row, **{k: run.get(k) for k in RUN_COLUMNS}} for row in rows]


def differing(table: pd.DataFrame, label: list[str] | None = None, shown: int = 3) -> list[str]:
    """One line per condition column whose values differ between the rows of `table`, e.g.
    "rows differ in torch_threads: 1 (8 rows), 2 (2 rows: transfer/cnn/3, transfer/cnn/4)"; a table without the
    provenance columns (written before they were recorded) gives one line saying so. `label`: the
    columns that name a row in the lines (default: none)."""
    if table.empty:
        return []
    missing = [c for c in CONDITION_COLUMNS if c not in table]
    if len(missing) == len(CONDITION_COLUMNS):
        return [f"no provenance recorded for its {len(table)} row(s) (written before it was recorded)"]
    lines = []
    for col in CONDITION_COLUMNS:
        if col not in table:
            continue
        values = table[col].astype(object).where(table[col].notna(), "not recorded")
        counts = values.value_counts(sort=True)
        if len(counts) < 2:
            continue
        parts = []
        for value, n in counts.items():
            part = f"{value} ({n} row{'s' if n > 1 else ''}"
            if label and n < len(table) / 2:
                names = ["/".join(str(r[c]) for c in label) for _, r in table[values == value].iterrows()]
                part += ": " + ", ".join(names[:shown]) + (", …" if len(names) > shown else "")
            parts.append(part + ")")
        lines.append(f"rows differ in {col}: " + ", ".join(parts))
    return lines


def summary_of(table: pd.DataFrame) -> dict[str, str]:
    """{provenance column: its value, or each value with its row count where they differ}; '–' where
    the table has no such column (written before it was recorded), 'not recorded' for empty cells."""
    out = {}
    for col in COLUMNS:
        if col not in table or table.empty:
            out[col] = "–"
            continue
        values = table[col].astype(object).where(table[col].notna(), "not recorded")
        counts = values.value_counts(sort=True)
        if col == "pretrain_key":
            keys = counts.drop("not recorded", errors="ignore")
            out[col] = f"{len(keys)} distinct" + (f" ({', '.join(map(str, keys.index[:3]))}…)" if len(keys) else "")
        elif len(counts) == 1:
            out[col] = str(counts.index[0])
        else:
            out[col] = ", ".join(f"{v} ({n} rows)" for v, n in counts.items())
    return out
