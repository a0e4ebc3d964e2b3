"""Re-run one trial of a sweep, or one seed of an ablation arm, from its run record, in plain PyTorch,
and compare it with what was recorded: per-epoch training loss and validation AUC (pre-training and
fine-tuning), the best-validation weights, and every test image's probability.

The run is rebuilt from what the study wrote: the configuration (an ablation row's `config`; a sweep's
settings in run.json plus the trial's searched values), the data (run.json's folders, image size,
split), and the conditions the row records (device, torch threads). The pre-training is computed
again, never read from the store, so the store entry is checked as well. On the machine kind that
made the row, with its conditions, the numbers agree bit for bit; elsewhere the largest difference is
reported. `python -m study.reproduce` is the command.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from pneumo_ray.config.data import DataSpec
from pneumo_ray.config.errors import UserError
from pneumo_ray.config.search import SEARCHED
from pneumo_ray.config.sweep import SweepConfig
from pneumo_ray.config.train import TrainConfig
from pneumo_ray.data.study_data import load_study_data
from pneumo_ray.storage import provenance
from pneumo_ray.storage.results import read_table
from pneumo_ray.train import checkpoints, store
from pneumo_ray.train.augment import Normalize
from pneumo_ray.train.conditions import differences, training_conditions
from pneumo_ray.train.loop import TrainingState, pick_device, predict
from pneumo_ray.train.models import build_model
from pneumo_ray.train.protocol import finetune, pretrain

Log = Callable[[str], object]
COMPARED = ("train_loss", "val_loss", "val_auc")  # per epoch


@dataclass(frozen=True)
class Recorded:
    """One finished trial or seed as the study recorded it."""

    label: str  # "sweep trial 1a2b_00003 (cnn)", "ablation transfer / cnn / seed 3"
    row: dict  # its trials.parquet / ablations.parquet row
    config: TrainConfig
    data: DataSpec
    predictions: pd.DataFrame  # path, probability: its test images
    checkpoint: Path | None  # the trial's last checkpoint folder (state/ and best.safetensors)
    threads: int  # torch threads it trained with (not recorded: its CPUs, as Ray gives them)
    device: str | None  # "cpu", "cuda" (None: not recorded)
    workers: int = 1


@dataclass
class Agreement:
    """Each compared value: (what, recorded, re-run, counted). Counted values (losses, AUCs,
    probabilities) must agree within the tolerance; weights (not counted) are compared for bit-exactness
    only: on other conditions they differ by amounts that say nothing about the results (the recorded
    checkpoint's weights are checked through their own test probabilities instead)."""

    rows: list[tuple[str, float, float, bool]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # things that were not compared, and why

    def add(self, what: str, recorded: float | None, rerun: float | None, counted: bool = True) -> None:
        if recorded is not None and rerun is not None:
            self.rows.append((what, float(recorded), float(rerun), counted))

    def largest(self, counted_only: bool = True) -> float:
        """The largest |recorded − re-run| (of the counted values, or of all)."""
        diffs = [_difference(a, b) for _, a, b, counted in self.rows if counted or not counted_only]
        return max(diffs, default=0.0)


def _difference(a: float, b: float) -> float:
    """|a − b|; 0 when both are NaN (an undefined metric on both sides), inf when one is."""
    if math.isnan(a) or math.isnan(b):
        return 0.0 if math.isnan(a) and math.isnan(b) else math.inf
    return abs(a - b)


# --- what was recorded --------------------------------------------------------------------------------


def recorded_run(
    folder: str | Path,
    *,
    trial: str | None = None,
    arm: str | None = None,
    model: str | None = None,
    seed: int | None = None,
) -> Recorded:
    """The trial (`trial`: a sweep's trial id; default its best trial by validation AUC) or the seed
    (`arm`, `model`, `seed` of an ablation; defaults: transfer, the first model, the lowest seed) of the
    study in `folder`. UserError naming the flag or file for anything that does not fit."""
    folder = Path(folder)
    run_path = folder / "run.json"
    if not folder.is_dir():
        raise UserError(f"{folder}: no such results folder; give results/<name> of a finished study")
    if not run_path.is_file():
        raise UserError(f"{folder}: no run.json; give a results folder that study.sweep or study.ablate wrote")
    try:
        run = json.loads(run_path.read_text())
    except ValueError as e:
        raise UserError(f"{run_path} is damaged ({e}); restore it from a copy") from None
    if run.get("kind") == "ablation":
        if trial is not None:
            raise UserError(f"--trial: {folder} is an ablation; choose a seed with --arm, --model and --seed")
        return _ablation_seed(folder, run, arm, model, seed)
    if any(v is not None for v in (arm, seed)):
        raise UserError(f"--arm/--seed: {folder} is a sweep; choose a trial with --trial")
    return _sweep_trial(folder, run, trial, model)


def _table(folder: Path, name: str) -> pd.DataFrame:
    try:
        return read_table(folder, name)
    except ValueError as e:
        raise UserError(str(e)) from None


def _pick(rows: pd.DataFrame, flag: str, column: str, value, default) -> pd.DataFrame:
    have = sorted(rows[column].dropna().unique().tolist())
    chosen = default(have) if value is None else value
    if value is not None and column == "seed":
        chosen = int(value)
    picked = rows[rows[column] == chosen]
    if picked.empty:
        raise UserError(f"{flag} {chosen}: not in this study; it has {', '.join(map(str, have)) or 'none'}")
    return picked


def _ablation_seed(folder: Path, run: dict, arm, model, seed) -> Recorded:
    rows = _table(folder, "ablations")
    if rows.empty:
        raise UserError(f"{folder}: no ablations.parquet rows to reproduce")
    rows = rows[rows["error"].isna()]
    rows = _pick(rows, "--arm", "arm", arm, lambda have: "transfer" if "transfer" in have else have[0])
    rows = _pick(rows, "--model", "model", model, lambda have: have[0])
    row = _pick(rows, "--seed", "seed", seed, lambda have: have[0]).iloc[0].to_dict()
    cfg = TrainConfig(**json.loads(row["config"]))
    session = next((s for s in reversed(run.get("sessions", [])) if s.get("arm") == row["arm"]), {})
    sweep = _sweep_config(session.get("sweep"), run_path=folder / "run.json")
    data = _data_spec(run, sweep).replace(
        use_pretrain=cfg.pretrain_epochs > 0, allow_overlap=bool(row.get("allow_test_overlap"))
    )
    preds = _table(folder, "ablation_predictions")
    if not preds.empty:
        preds = preds[(preds.arm == row["arm"]) & (preds.model == row["model"]) & (preds.seed == row["seed"])]
    label = f"ablation {folder.name}: arm {row['arm']}, {row['model']}, seed {row['seed']}"
    return _recorded(label, row, cfg, data, preds, sweep)


def _sweep_trial(folder: Path, run: dict, trial, model) -> Recorded:
    trials = _table(folder, "trials")
    ok = trials[trials["best_val_auc"].notna()] if len(trials) else trials
    if ok.empty:
        raise UserError(f"{folder}: no finished trial in trials.parquet to reproduce")
    if trial is None:
        ok = _pick(ok, "--model", "model", model, lambda have: have[0])
        row = ok.sort_values(["best_val_auc", "trial_id"], ascending=[False, True]).iloc[0].to_dict()
    else:
        row = _pick(ok, "--trial", "trial_id", trial, None).iloc[0].to_dict()
    sweep = _sweep_config(run.get("sweep"), run_path=folder / "run.json")
    searched = {k: row[k] for k in TrainConfig.__dataclass_fields__ if k in row and k in _searched(row)}
    cfg = sweep.base_config(row["model"]).replace(**searched)
    preds = _table(folder, "predictions")
    if not preds.empty:
        preds = preds[preds.trial_id == row["trial_id"]]
    label = f"sweep {folder.name}: trial {row['trial_id']} ({row['model']})"
    return _recorded(label, row, cfg, sweep.data_spec(_data_spec(run, sweep)), preds, sweep)


def _searched(row: dict) -> set[str]:
    return {k for k in SEARCHED if pd.notna(row.get(k))}


def _sweep_config(recorded: dict | None, run_path: Path) -> SweepConfig:
    if not isinstance(recorded, dict):
        raise UserError(f"{run_path}: no recorded settings ('sweep') to rebuild the run from")
    return SweepConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in recorded.items()})


def _data_spec(run: dict, sweep: SweepConfig) -> DataSpec:
    return sweep.data_spec(DataSpec.from_record(run.get("args") or {}))


def _recorded(label, row, cfg, data, preds, sweep: SweepConfig) -> Recorded:
    path = row.get("checkpoint_path")
    ckpt = Path(path) if isinstance(path, str) and "://" not in path and Path(path).is_dir() else None
    threads = row.get("torch_threads")
    return Recorded(
        label=label,
        row=row,
        config=cfg,
        data=data,
        predictions=preds,
        checkpoint=ckpt,
        # not recorded (a table from before): the trial's CPUs, which Ray gives it as OMP_NUM_THREADS
        threads=int(threads) if pd.notna(threads) else max(1, int(sweep.cpus_per_trial / sweep.workers_per_trial)),
        device=row.get("device") if isinstance(row.get("device"), str) else None,
        workers=int(sweep.workers_per_trial),
    )


# --- the re-run -----------------------------------------------------------------------------------------


class _Enough(Exception):
    """Raised from on_state once the re-run has trained as many epochs as the recorded one."""

    def __init__(self, state: TrainingState) -> None:
        self.state = state


def reproduce(rec: Recorded, *, device: str | None = None, threads: int | None = None, log: Log = print) -> Agreement:
    """Train `rec` again (pre-training included) under its recorded device and threads (or those given),
    and compare every recorded number with the new one."""
    if rec.workers != 1:
        raise UserError(
            f"{rec.label} trained with {rec.workers} DDP workers; the plain-PyTorch re-run trains with one "
            "(its shards differ): reproduce a one-worker study"
        )
    name = device or rec.device or "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"{rec.label} trained on cuda and torch sees no GPU here: give --device cpu (the numbers then "
            "differ: compare with --tolerance)"
        )
    dev = pick_device(name)
    threads = threads or rec.threads
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _rerun(rec, dev, log)
    finally:
        torch.set_num_threads(before)


def _rerun(rec: Recorded, dev: torch.device, log: Log) -> Agreement:
    agree = Agreement()
    cond = training_conditions(dev)
    recorded_cond = {
        c: rec.row.get(col) for c, col in provenance.WORKER_COLUMNS.items() if pd.notna(rec.row.get(col, math.nan))
    }
    diff = differences(recorded_cond, {k: cond[k] for k in recorded_cond})
    log(f"re-running {rec.label} in plain PyTorch on {dev} with {torch.get_num_threads()} torch thread(s)")
    if not recorded_cond:
        agree.notes.append("the row records no conditions (written before they were recorded)")
    elif diff:
        agree.notes.append(
            "conditions differ from the recorded: " + ", ".join(f"{k} {a} → {b}" for k, (a, b) in diff.items())
        )
    data = load_study_data(rec.data, quiet=True, log=None)
    if (
        rec.row.get("data_manifest_hash")
        and provenance.target_manifest_hash(data.info) != rec.row["data_manifest_hash"]
    ):
        agree.notes.append("the target data's manifest differs from the recorded one (other files?)")
    init = None
    if rec.config.pretrain_epochs > 0:
        init = _pretraining(rec, data, dev, agree, log)
    history, best_state, normalize, threshold = _finetuning(rec, data, dev, init, agree, log)
    _test_images(rec, data, dev, best_state, normalize, agree, log)
    _weights(rec, data, dev, best_state, normalize, agree)
    if rec.row.get("test_threshold") is not None:
        agree.add("test threshold", rec.row["test_threshold"], threshold)
    return agree


def _pretraining(rec: Recorded, data, dev, agree: Agreement, log: Log) -> dict:
    log(f"pre-training {rec.config.pretrain_epochs} epoch(s) on {data.source.describe()}")
    state, meta = pretrain(rec.config, data, dev, log=None)
    key = rec.row.get("pretrain_key")
    if isinstance(key, str) and key != meta["key"]:
        agree.notes.append(f"pre-training key {meta['key']} here, {key} recorded (other conditions or code)")
    found = isinstance(key, str) and rec.data.cache_dir
    entry = store.Entry.of(store.folder(rec.data.cache_dir), key) if found else None
    if entry is None or not entry.weights.exists():
        agree.notes.append("the recorded pre-training is not in the store: its epochs and weights are not compared")
        return state
    stored, stored_meta = checkpoints.load_weights(entry.weights)
    for h, r in zip(stored_meta.get("history", []), meta["history"]):
        for k in COMPARED:
            agree.add(f"pre-training epoch {h['epoch']} {k}", h.get(k), r.get(k))
    agree.add("pre-training weights (largest |difference|)", 0.0, _max_weight_diff(stored, state), counted=False)
    return state


def _finetuning(rec: Recorded, data, dev, init, agree: Agreement, log: Log):
    recorded = _recorded_history(rec, agree)
    n = len(recorded) or int(rec.row.get("epochs_run") or rec.config.epochs)
    log(f"fine-tuning {n} of {rec.config.epochs} epoch(s) on {data.train.describe()}")

    def enough(st: TrainingState) -> None:
        if st.epoch >= n:
            raise _Enough(st)

    try:
        _, result = finetune(rec.config, data, dev, init_state=init, on_state=enough, log=None)
    except _Enough as stop:
        result = stop.state.result
    rerun = {h["epoch"]: h for h in result.history}
    for h in recorded:
        for k in COMPARED:
            agree.add(f"fine-tuning epoch {h['epoch']} {k}", h.get(k), rerun.get(int(h["epoch"]), {}).get(k))
    return result.history, result.best_state, result.normalize, result.threshold


def _recorded_history(rec: Recorded, agree: Agreement) -> list[dict]:
    """The fine-tuning epochs as the trial recorded them: its last checkpoint's training state."""
    if rec.checkpoint is not None and (rec.checkpoint / "state" / checkpoints.STATE_FILE).exists():
        return [h for h in checkpoints.training_history(rec.checkpoint / "state") if h.get("phase") == "finetune"]
    agree.notes.append("no checkpoint with the training state on this machine: per-epoch numbers not compared")
    return []


def _test_images(rec: Recorded, data, dev, best_state, normalize: Normalize, agree: Agreement, log: Log) -> None:
    model = build_model(rec.config.model)
    model.load_state_dict(best_state)
    probs = predict(model.to(dev), data.test, normalize=normalize, device=dev)
    if rec.predictions.empty:
        agree.notes.append("no recorded test predictions: per-image probabilities not compared")
        return
    mine = pd.Series(probs, index=data.test.manifest["path"].to_numpy())
    recorded = rec.predictions.set_index("path")["probability"]
    common = recorded.index.intersection(mine.index)
    if len(common) != len(mine):
        agree.notes.append(f"{len(mine) - len(common)} test image(s) here were not in the recorded predictions")
    diffs = (recorded[common] - mine[common]).abs()
    worst = diffs.idxmax() if len(diffs) else None
    if worst is not None:
        agree.add(
            f"test probability, largest over {len(common)} images ({Path(str(worst)).name})",
            recorded[worst],
            mine[worst],
        )
    log(f"test: {len(common)} images compared")


def _weights(rec: Recorded, data, dev, best_state: dict, normalize: Normalize, agree: Agreement) -> None:
    """The best-validation weights against the checkpoint's (best.safetensors), and the checkpoint's own
    test probabilities against the recorded ones: weights changed after the run show there."""
    path = rec.checkpoint / "best.safetensors" if rec.checkpoint is not None else None
    if path is None or not path.exists():
        agree.notes.append("no best.safetensors on this machine: the weights are not compared")
        return
    stored, _ = checkpoints.load_weights(path)
    agree.add("best-validation weights (largest |difference|)", 0.0, _max_weight_diff(stored, best_state), False)
    if rec.predictions.empty:
        return
    model = build_model(rec.config.model)
    model.load_state_dict(stored)
    mine = pd.Series(
        predict(model.to(dev), data.test, normalize=normalize, device=dev), index=data.test.manifest["path"]
    )
    recorded = rec.predictions.set_index("path")["probability"]
    common = recorded.index.intersection(mine.index)
    worst = (recorded[common] - mine[common]).abs().idxmax()
    agree.add(f"checkpoint's own test probability, largest over {len(common)} images", recorded[worst], mine[worst])


def _max_weight_diff(a: dict, b: dict) -> float:
    if set(a) != set(b):
        return math.inf
    return max((float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0) for k in a)


def describe(agree: Agreement, tolerance: float) -> tuple[list[str], bool]:
    """The report's lines and whether the re-run agrees: within `tolerance` for the counted values, and
    with `tolerance` 0, every value (weights too) identical."""
    lines = [f"note: {n}" for n in agree.notes]
    width = max((len(w) for w, *_ in agree.rows), default=10)
    lines.append(f"{'':{width}}  {'recorded':>22}  {'re-run':>22}  |difference|")
    for what, a, b, _ in agree.rows:
        lines.append(f"{what:{width}}  {a:22.17g}  {b:22.17g}  {_difference(a, b):.3g}")
    worst, everything = agree.largest(), agree.largest(counted_only=False)
    ok = worst <= tolerance and (tolerance > 0 or everything == 0)
    if everything == 0:
        verdict = f"bit-exact: all {len(agree.rows)} compared values are identical"
    else:
        verdict = f"largest difference {worst:.3g} in the losses, AUCs and probabilities"
        if tolerance > 0:
            verdict += f" ({'within' if worst <= tolerance else 'beyond'} --tolerance {tolerance:g})"
        verdict += f"; weights up to {everything:.3g} apart" if everything > worst else ""
    lines.append(("agrees: " if ok else "DISAGREES: ") + verdict)
    return lines, ok
