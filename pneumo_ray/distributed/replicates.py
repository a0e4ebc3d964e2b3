"""Ablation arms: the same models trained over several seeds with one change each, as Ray Train
jobs scheduled by Ray Tune (a grid over seeds, one experiment per model and arm).

The reference arm is `transfer` (pre-train on the source, fine-tune on the target). Each flag
switches one ingredient off; flags combine into one arm ("no-augment+no-class-weights").
Seeds vary initialisation, batch order and augmentation; the patient-grouped validation split is
fixed (`split_seed`), so every arm and seed selects its checkpoint on the same validation patients,
and every arm is tested on the same test images.

Where an arm's configuration comes from decides whether the comparison is fair. With `--tune N`
each arm gets its own Optuna search (same search space minus what the arm fixes, same budget N,
same validation patients, validation AUC only) and runs its seeds at its own best configuration:
the question "does pre-training help?" is then asked of each arm at its best. A configuration
tuned for one arm (`--from` a sweep that pre-trained) applied to another tilts the comparison
toward the arm it was tuned for; rows record `tuned_for` and the summary warns.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pneumo_ray.config.arms import Arm
from pneumo_ray.config.data import DataSpec
from pneumo_ray.config.search import SEARCHED
from pneumo_ray.config.sweep import SweepConfig
from pneumo_ray.config.train import TrainConfig
from pneumo_ray.distributed import interrupts
from pneumo_ray.distributed.trials import (
    TEST_KEYS,
    ModelSweep,
    TrialSpec,
    best_checkpoint_path,
    restorable,
    trial_trainable,
    tune_config,
    tune_run_config,
)
from pneumo_ray.storage import provenance


@dataclass(frozen=True)
class ArmConfig:
    """An arm's configuration for one model, where it came from, and which arm it was tuned for
    (None: the seed study's defaults, tuned for no arm)."""

    config: TrainConfig
    source: str
    tuned_for: str | None = None


def base_configs(
    sweep: SweepConfig, best: pd.DataFrame | None, source: str | None, tuned_for: str | None = None
) -> dict[str, ArmConfig]:
    """Per model: the configuration to ablate and where it came from — the best trial (by
    validation AUC) of a finished sweep, or the seed study's defaults — with the preset's lengths."""
    out = {}
    for model in sweep.models:
        cfg = sweep.base_config(model)
        if best is None:
            out[model] = ArmConfig(cfg, "defaults")
            continue
        rows = best[best["model"] == model]
        if not len(rows):
            raise ValueError(f"{source} has no finished {model} trial to take a configuration from")
        row = rows.iloc[0]
        cfg = cfg.replace(**{k: (float(row[k])) for k in SEARCHED if k in row and pd.notna(row[k])})
        out[model] = ArmConfig(cfg, f"{source} trial {row['trial_id']} (val AUC {row['best_val_auc']:.4f})", tuned_for)
    return out


def best_tuned(trials: pd.DataFrame, arm: Arm, base: TrainConfig, searched: list[str]) -> ArmConfig:
    """The arm's configuration from its own search: the trial with the best validation AUC (the
    test set is never evaluated during tuning)."""
    ok = trials[trials["error"].isna() & trials["best_val_auc"].notna()]
    if not len(ok):
        raise RuntimeError(f"arm {arm.name}: every tuning trial failed ({len(trials)} tried); see the Ray logs")
    row = ok.sort_values(["best_val_auc", "trial_id"], ascending=[False, True]).iloc[0]
    cfg = base.replace(**{k: float(row[k]) for k in searched})
    return ArmConfig(
        cfg,
        f"tuned for {arm.name}: trial {row['trial_id']}, best of {len(trials)} by val AUC ({row['best_val_auc']:.4f})",
        arm.name,
    )


def run_seeds(
    model: str,
    cfg: TrainConfig,
    seeds: list[int],
    sweep: SweepConfig,
    *,
    source_hash: str | None,
    data: DataSpec,
    storage: str,
    store: Path,
    exp_name: str,
    resume: bool,
    concurrency: int,
    verbose: bool = False,
) -> ModelSweep:
    """One Tune experiment: a grid over `seeds`, each trial (shared pre-training +) one fine-tuning
    Ray Train job run to the last epoch (no early stopping: every seed is a full replicate)."""
    import os

    import ray.tune

    from pneumo_ray.distributed.console import TrialLines

    exp_path = os.path.join(storage, exp_name)
    trainable = trial_trainable(
        TrialSpec(
            base=cfg,
            searched=("seed",),
            data=data,
            source_hash=source_hash,
            store=store,
            storage=storage,
            resources=sweep.resources,
        )
    )
    t0 = time.time()
    if restorable(exp_path):
        if not resume:
            raise RuntimeError(f"an interrupted run of this arm is in {exp_path}: pass --resume to complete it")
        tuner = ray.tune.Tuner.restore(exp_path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = ray.tune.Tuner(
            trainable,
            param_space={"seed": ray.tune.grid_search(list(seeds))},
            tune_config=tune_config(concurrency),
            run_config=tune_run_config(
                exp_name,
                storage,
                verbose=verbose,
                max_failures=sweep.max_failures,
                lines=TrialLines(
                    f"{model} seed", epochs=cfg.epochs, num_samples=len(seeds), concurrency=concurrency, shown=("seed",)
                ),
            ),
        )
    grid, cut = interrupts.fit(tuner, exp_path)
    return ModelSweep(model, exp_path, grid, time.time() - t0, cut=cut)


def seed_rows(
    ms: ModelSweep, arm: Arm, ac: ArmConfig, preset: str, split_seed: int, source_hash: str | None, evaluated: dict
) -> tuple[list[dict], list[pd.DataFrame]]:
    """(one row per seed, per-image test predictions) from one experiment + its test evaluations."""
    cfg, origin = ac.config, ac.source
    rows, preds = [], []
    for result in ms.results:
        m = result.metrics or {}
        seed = int(result.config["seed"])
        c = cfg.replace(seed=seed)
        trial_id = m.get("trial_id") or Path(result.path).name
        metrics, p = evaluated.get(trial_id, ({}, None))[:2]  # (test metrics, test predictions, …)
        rows.append(
            dict(
                arm=arm.name,
                model=ms.model,
                seed=seed,
                preset=preset,
                split_seed=split_seed,
                config=json.dumps(c.to_dict(), sort_keys=True),
                config_source=origin,
                tuned_for=ac.tuned_for,
                trial_id=trial_id,
                **provenance.from_report(m),  # what trained it: conditions, pre-training key, computed or reused
                allow_test_overlap=arm.allow_overlap,
                epochs_run=m.get("epoch"),
                best_epoch=m.get("best_epoch"),
                val_auc=m.get("best_val_auc"),
                val_accuracy=m.get("best_val_accuracy"),
                val_sensitivity=m.get("best_val_sensitivity"),
                val_specificity=m.get("best_val_specificity"),
                test_threshold=m.get("best_threshold"),
                **{f"test_{k}": metrics.get(f"test_{k}") for k in TEST_KEYS},
                wall_s=m.get("time_total_s"),
                hostname=m.get("worker_hostname"),
                error=None if result.error is None else str(result.error)[:500],
                checkpoint_path=best_checkpoint_path(result),
            )
        )
        if p is not None:
            p = p.copy()
            for col, val in (("seed", seed), ("model", ms.model), ("arm", arm.name)):
                p.insert(0, col, val)
            preds.append(p)
    return rows, preds
