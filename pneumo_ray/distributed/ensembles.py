"""Validation-chosen ensembles of a results folder (issue 21): the validation predictions the sweep and
the ablation keep beside their test predictions, and the ensembles built from those tables;
`analysis/ensemble.py` chooses (validation only) and then evaluates (test, once).

A sweep's ensemble: per model, its candidates are the trials with a best-validation checkpoint. An
ablation arm's: per (arm, model), the arm's seeds (one configuration, K seeds). No training: a folder
written before validation predictions were kept gets them from the checkpoints (torch and the data on
this machine, no Ray cluster; `validation_from_checkpoints`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pneumo_ray.analysis import ensemble
from pneumo_ray.config.data import DataSpec
from pneumo_ray.config.errors import UserError
from pneumo_ray.storage.results import read_table, upsert_parquet

KEYS = dict(
    val_predictions=["trial_id", "path"],
    ablation_val_predictions=["arm", "model", "seed", "path"],
    ensemble=["arm", "model"],
    ensemble_predictions=["arm", "model", "path"],
)
DEFAULT_K = 5  # at most 5 picks: Caruana's greedy gains most in its first few; validation usually stops it sooner


@dataclass(frozen=True)
class Kind:
    """Where a folder's candidates are: its trial table, the id column, its test and validation predictions."""

    name: str  # "sweep" or "ablation"
    rows: str
    id_column: str
    test: str
    val: str
    val_auc: str


SWEEP = Kind("sweep", "trials", "trial_id", "predictions", "val_predictions", "best_val_auc")
ABLATION = Kind("ablation", "ablations", "seed", "ablation_predictions", "ablation_val_predictions", "val_auc")


def kind_of(folder: Path) -> Kind | None:
    """SWEEP or ABLATION by the tables `folder` holds; None for neither."""
    if (folder / "trials.parquet").exists():
        return SWEEP
    if (folder / "ablations.parquet").exists():
        return ABLATION
    return None


def validation_rows(evaluated: Mapping[str, tuple], ids: Mapping[str, Mapping[str, object]]) -> pd.DataFrame:
    """The validation predictions of evaluated trials ({trial_id: Evaluated}), each with the id columns
    `ids[trial_id]` first (sweep: trial_id, model; ablation: arm, model, seed)."""
    frames = []
    for tid, ev in evaluated.items():
        val = getattr(ev, "val_predictions", None)
        if val is None or tid not in ids:
            continue
        f = val.drop(columns=["prediction"], errors="ignore").copy()
        for col, value in reversed(list(ids[tid].items())):
            f.insert(0, col, value)
        frames.append(f)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def write_validation(folder: Path, kind: Kind, rows: pd.DataFrame) -> None:
    if len(rows):
        upsert_parquet(folder / f"{kind.val}.parquet", rows, KEYS[kind.val])


@dataclass(frozen=True)
class Pool:
    """One ensemble's candidates: {id: threshold}, their validation and test predictions (long tables),
    and the candidates left out (why)."""

    model: str
    arm: str | None
    thresholds: dict
    val: pd.DataFrame
    test: pd.DataFrame
    left_out: tuple[str, ...] = ()


def _usable(rows: pd.DataFrame, kind: Kind) -> pd.DataFrame:
    ok = rows[kind.val_auc].notna() & rows["test_threshold"].notna()
    if "error" in rows:
        ok &= rows["error"].isna()
    return rows[ok]


def _mine(table: pd.DataFrame, kind: Kind, rows: pd.DataFrame, arm: str | None, model: str) -> pd.DataFrame:
    """The rows of a prediction table that belong to the candidates in `rows`."""
    if table.empty:
        return table
    if kind is SWEEP:
        return table[table["trial_id"].isin(set(rows["trial_id"]))]
    return table[(table["arm"] == arm) & (table["model"] == model)]


def pools(folder: Path, kind: Kind) -> list[Pool]:
    """Every ensemble the folder's tables allow: per model (sweep) or per (arm, model) (ablation)."""
    rows = _usable(read_table(folder, kind.rows), kind)
    test_all, val_all = read_table(folder, kind.test), read_table(folder, kind.val)
    out = []
    for key, g in rows.groupby(["model"] if kind is SWEEP else ["arm", "model"], sort=True):
        key = key if isinstance(key, tuple) else (key,)
        arm, model = (None, key[0]) if kind is SWEEP else key
        val, test = _mine(val_all, kind, g, arm, model), _mine(test_all, kind, g, arm, model)
        val_ids = set(val[kind.id_column]) if len(val) else set()
        test_ids = set(test[kind.id_column]) if len(test) else set()
        thresholds, left = {}, []
        for cid, threshold in zip(g[kind.id_column], g["test_threshold"]):
            if cid not in val_ids or cid not in test_ids:
                left.append(f"{kind.id_column} {cid}: no {'validation' if cid not in val_ids else 'test'} predictions")
            elif val.loc[val[kind.id_column] == cid, "probability"].isna().any():
                left.append(f"{kind.id_column} {cid}: NaN validation probabilities (training diverged?)")
            else:
                thresholds[cid] = float(threshold)
        out.append(Pool(model, arm, thresholds, val, test, tuple(left)))
    return out


def build_pool(pool: Pool, kind: Kind, max_k: int, n_boot: int = 2000, seed: int = 0) -> tuple[dict, pd.DataFrame]:
    """(ensemble.parquet row, ensemble_predictions rows) of one pool. The members and K are chosen from
    the validation predictions alone; the test predictions are read after that, once."""
    where = f"{kind.val}.parquet ({pool.model}{'' if pool.arm is None else ', arm ' + pool.arm})"
    val = ensemble.scores_from_predictions(pool.val, pool.thresholds, kind.id_column, where)
    selection = ensemble.select(val, max_k)  # validation only: the test set is not read before this line
    test = ensemble.scores_from_predictions(pool.test, pool.thresholds, kind.id_column, f"{kind.test}.parquet")
    ev = ensemble.evaluate(test, selection, n_boot, seed)
    row = dict(kind=kind.name, arm=pool.arm, model=pool.model, candidates=kind.id_column)
    row.update(ensemble.summary_row(selection, ev, pool.thresholds))
    row["left_out"] = json.dumps(list(pool.left_out))
    preds = ensemble.prediction_frame(test, ev)
    preds.insert(0, "model", pool.model)
    preds.insert(0, "arm", pool.arm)
    return row, preds


def build_ensembles(
    folder: Path,
    max_k: int = DEFAULT_K,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    only: Callable[[Pool], bool] | None = None,
    log: Callable[[str], object] | None = print,
) -> pd.DataFrame:
    """Build (or rebuild) the ensembles of a sweep or ablation folder from its tables and write
    ensemble.parquet and ensemble_predictions.parquet; `only` picks the pools (an arm's). Returns the rows."""
    log = log or (lambda _: None)
    kind = kind_of(folder)
    if kind is None:
        raise ValueError(f"{folder}: neither trials.parquet nor ablations.parquet")
    rows, preds = [], []
    for pool in pools(folder, kind):
        if only is not None and not only(pool):
            continue
        name = pool.model if pool.arm is None else f"{pool.arm}, {pool.model}"
        for why in pool.left_out:
            log(f"ensemble {name}: left out {why}")
        if not pool.thresholds:
            log(f"ensemble {name}: no candidate with validation and test predictions; none built")
            continue
        row, p = build_pool(pool, kind, max_k, n_boot, seed)
        rows.append(row)
        preds.append(p)
    if rows:
        upsert_parquet(folder / "ensemble.parquet", pd.DataFrame(rows), KEYS["ensemble"])
        upsert_parquet(
            folder / "ensemble_predictions.parquet", pd.concat(preds, ignore_index=True), KEYS["ensemble_predictions"]
        )
    return pd.DataFrame(rows)


def summary_lines(folder: Path) -> list[str]:
    """The folder's ensembles in a few lines each, beside the best single trial (a sweep) or beside the
    arm's mean over seeds from ablation_summary.parquet (an ablation)."""
    table = read_table(folder, "ensemble")
    if table.empty:
        return []
    lines = [
        "\nensembles chosen on validation (members and K from validation only; then applied once to test; "
        "[95% bootstrap CI over test images]):"
    ]
    summary = read_table(folder, "ablation_summary") if (folder / "ablation_summary.parquet").exists() else None
    for r in table.to_dict("records"):
        head = r["model"] if r.get("arm") is None else f"arm {r['arm']}, {r['model']}"
        lines.append(f"{head}: " + ensemble.describe(r)[0])
        lines += ensemble.describe(r)[1:]
        if summary is not None and len(summary):
            arm = summary[(summary["kind"] == "arm") & (summary["arm"] == r["arm"]) & (summary["model"] == r["model"])]
            if len(arm):
                a = arm.iloc[0]
                cells = "  ".join(
                    f"{m.replace('_', ' ')} {a[f'test_{m}_mean']:.3f} [{a[f'test_{m}_ci_low']:.3f}, "
                    f"{a[f'test_{m}_ci_high']:.3f}]"
                    for m in ("auc", "accuracy", "balanced_accuracy", "sensitivity", "specificity")
                    if f"test_{m}_mean" in a
                )
                lines.append(f"  arm's mean of {int(a['n_seeds'])} seeds (ablation summary)  {cells}")
    return lines


def data_spec_of(folder: Path, kind: Kind, run: dict) -> DataSpec:
    """The DataSpec the folder's trials trained on (their validation set), from its run.json."""
    from pneumo_ray.config.output import OutputSpec
    from pneumo_ray.distributed.sweep import specs_from_run, with_cache_dir

    if kind is SWEEP:
        return with_cache_dir(specs_from_run(run, OutputSpec(name=folder.name, results=str(folder.parent)))[1])
    recorded, settings = run.get("args", {}), run.get("settings", {})
    return with_cache_dir(
        DataSpec(
            data_root=recorded.get("data_root", settings.get("data_root")),
            pretrain_root=None,  # validation is drawn from the target alone
            image_size=int(settings["image_size"]),
            split_seed=int(settings["split_seed"]),
            val_fraction=float(settings.get("val_fraction", 0.2)),
            use_pretrain=False,
            cache_dir=recorded.get("cache_dir"),
        )
    )


def validation_from_checkpoints(folder: Path, run: dict, log: Callable[[str], object] = print) -> int:
    """Apply every candidate's best-validation checkpoint that lacks validation predictions to the
    validation set (as the drivers do now), and write them; returns how many. Torch and the data, no
    Ray cluster. A checkpoint not on this machine is left out (said once)."""
    from pneumo_ray.distributed.jobs import evaluate_checkpoint

    kind = kind_of(folder)
    rows = _usable(read_table(folder, kind.rows), kind)
    val = read_table(folder, kind.val)
    cols = ["trial_id"] if kind is SWEEP else ["arm", "model", "seed"]
    have = set(map(tuple, val[cols].astype(str).to_numpy())) if len(val) else set()
    todo = [r for r in rows.to_dict("records") if tuple(str(r[c]) for c in cols) not in have]
    if not todo:
        return 0
    if not run:
        raise UserError(
            f"{folder}: {len(todo)} candidate(s) have no validation predictions, and without its run.json where "
            "their data are is unknown; restore run.json from a copy"
        )
    data = data_spec_of(folder, kind, run)
    log(f"{len(todo)} checkpoint(s) without validation predictions: applying them to validation (no training)")
    done = 0
    for i, r in enumerate(todo, 1):
        path = r.get("checkpoint_path")
        if not isinstance(path, str) or not path:
            log(f"  {kind.id_column} {r[kind.id_column]}: no checkpoint recorded; left out")
            continue
        if "://" not in path and not Path(path).exists():
            log(f"  {kind.id_column} {r[kind.id_column]}: checkpoint {path} not on this machine; left out")
            continue
        ev = evaluate_checkpoint(path, data)
        ids = {c: r[c] for c in (["trial_id", "model"] if kind is SWEEP else cols)}
        write_validation(folder, kind, validation_rows({"x": ev}, {"x": ids}))
        done += 1
        log(f"  [{i}/{len(todo)}] {kind.id_column} {r[kind.id_column]}: {len(ev.val_predictions)} validation images")
    return done


def ensemble_failed(folder: Path, e: Exception) -> None:
    """A driver's ensemble step that failed on its tables: said in one warning; the run's own results stay."""
    print(
        f"warning: the ensemble of {folder} was not built ({type(e).__name__}: {e}); "
        f"python -m study.ensemble {folder} builds it from the tables",
        file=sys.stderr,
    )


def after_run(folder: Path, max_k: int, only: Callable[[Pool], bool] | None = None) -> None:
    """A driver's last step when --ensemble K is on: build the folder's ensembles from its tables. A
    table the ensemble cannot use is one warning; the run's own results are kept either way."""
    print(f"\nchoosing ensembles of at most {max_k} pick(s) on validation AUC, then applying them once to test")
    try:
        build_ensembles(folder, max_k, only=only, log=lambda line: print(f"  {line}"))
    except ValueError as e:
        ensemble_failed(folder, e)
