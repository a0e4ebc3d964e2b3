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

from .config import TrainConfig
from .pipeline import pretrain_key
from .tuning import TEST_KEYS, ModelSweep, SweepConfig, best_checkpoint_path, search_space, trial_context, trial_fn

REFERENCE = "transfer"
# flag → (arm label, what it changes). Pre-training is unchanged by no-class-weights (it is shared
# with the transfer arm at each seed), so that arm isolates the fine-tuning loss weights.
CHANGES: dict[str, tuple[str, dict]] = {
    "no_pretrain": ("no-pretrain", dict(pretrain_epochs=0)),
    "no_augment": ("no-augment", dict(aug_strength=0.0, pretrain_aug_strength=0.0)),
    "no_class_weights": ("no-class-weights", dict(class_weight=1.0, class_weight_scale=1.0)),
    "freeze_backbone": ("freeze-backbone", dict(freeze_backbone=True)),
}
LEAKY = "test-overlap"   # pre-training on all of the source, as the seed study did
SEARCHED = ("aug_strength", "class_weight_scale", "lr", "pretrain_lr")


@dataclass(frozen=True)
class Arm:
    changes: tuple[str, ...] = ()       # keys of CHANGES
    allow_overlap: bool = False

    def __post_init__(self):
        unknown = [c for c in self.changes if c not in CHANGES]
        if unknown:
            raise ValueError(f"unknown arm change(s) {unknown}; known: {sorted(CHANGES)}")
        if self.allow_overlap and "no_pretrain" in self.changes:
            raise ValueError("--allow-test-overlap changes the pre-training data; with --no-pretrain there is none")

    @property
    def name(self) -> str:
        parts = [CHANGES[c][0] for c in self.changes]
        if self.allow_overlap:
            parts = (parts or [REFERENCE]) + [LEAKY]
        return "+".join(parts) if parts else REFERENCE

    @property
    def pretrains(self) -> bool:
        return "no_pretrain" not in self.changes

    def apply(self, cfg: TrainConfig) -> TrainConfig:
        for c in self.changes:
            cfg = cfg.replace(**CHANGES[c][1])
        return cfg

    def searched(self, names) -> list[str]:
        """The searched hyper-parameters this arm leaves free: not those its changes fix, and no
        pre-training learning rate for an arm that does not pre-train."""
        fixed = {k for c in self.changes for k in CHANGES[c][1]}
        if not self.pretrains:
            fixed.add("pretrain_lr")
        return [n for n in names if n not in fixed]


@dataclass(frozen=True)
class ArmConfig:
    """An arm's configuration for one model, where it came from, and which arm it was tuned for
    (None: the seed study's defaults, tuned for no arm)."""
    config: TrainConfig
    source: str
    tuned_for: str | None = None


def base_configs(sweep: SweepConfig, best: pd.DataFrame | None, source: str | None,
                 tuned_for: str | None = None) -> dict[str, ArmConfig]:
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


def tuning_space(arm: Arm, sweep: SweepConfig) -> list[str]:
    return arm.searched(search_space(sweep))


def best_tuned(trials: pd.DataFrame, arm: Arm, base: TrainConfig, searched: list[str]) -> ArmConfig:
    """The arm's configuration from its own search: the trial with the best validation AUC (the
    test set is never evaluated during tuning)."""
    ok = trials[trials["error"].isna() & trials["best_val_auc"].notna()]
    if not len(ok):
        raise RuntimeError(f"arm {arm.name}: every tuning trial failed ({len(trials)} tried); see the Ray logs")
    row = ok.sort_values(["best_val_auc", "trial_id"], ascending=[False, True]).iloc[0]
    cfg = base.replace(**{k: float(row[k]) for k in searched})
    return ArmConfig(cfg, f"tuned for {arm.name}: trial {row['trial_id']}, best of {len(trials)} by val AUC "
                          f"({row['best_val_auc']:.4f})", arm.name)


def run_seeds(model: str, cfg: TrainConfig, seeds: list[int], sweep: SweepConfig, *, source_hash, dargs: dict,
              storage: str, store: Path, exp_name: str, resume: bool, concurrency: int) -> ModelSweep:
    """One Tune experiment: a grid over `seeds`, each trial (shared pre-training +) one fine-tuning
    Ray Train job run to the last epoch (no early stopping: every seed is a full replicate)."""
    import os

    import ray.tune

    exp_path = os.path.join(storage, exp_name)
    ctx = trial_context(sweep, cfg, ["seed"], dargs, source_hash, store, storage)
    trainable = ray.tune.with_resources(ray.tune.with_parameters(trial_fn, ctx=ctx), {"cpu": 0, "memory": 64 * 1024 ** 2})
    t0 = time.time()
    if ray.tune.Tuner.can_restore(exp_path):
        if not resume:
            raise RuntimeError(f"an interrupted run of this arm is in {exp_path}: pass --resume to complete it")
        tuner = ray.tune.Tuner.restore(exp_path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = ray.tune.Tuner(trainable, param_space={"seed": ray.tune.grid_search(list(seeds))},
                               tune_config=ray.tune.TuneConfig(max_concurrent_trials=concurrency),
                               run_config=ray.tune.RunConfig(name=exp_name, storage_path=storage, verbose=1))
    grid = tuner.fit()
    return ModelSweep(model, exp_path, grid, time.time() - t0)


def seed_rows(ms: ModelSweep, arm: Arm, ac: ArmConfig, preset: str, split_seed: int,
              source_hash, evaluated: dict) -> tuple[list[dict], list[pd.DataFrame]]:
    """(one row per seed, per-image test predictions) from one experiment + its test evaluations."""
    cfg, origin = ac.config, ac.source
    rows, preds = [], []
    for result in ms.results:
        m = result.metrics or {}
        seed = int(result.config["seed"])
        c = cfg.replace(seed=seed)
        trial_id = m.get("trial_id") or Path(result.path).name
        metrics, p = evaluated.get(trial_id, ({}, None))
        rows.append(dict(
            arm=arm.name, model=ms.model, seed=seed, preset=preset, split_seed=split_seed, config=json.dumps(c.to_dict(), sort_keys=True),
            config_source=origin, tuned_for=ac.tuned_for, trial_id=trial_id,
            pretrain_key=pretrain_key(c, source_hash) if source_hash and c.pretrain_epochs else None,
            pretrain_computed=m.get("pretrain_computed"), allow_test_overlap=arm.allow_overlap,
            epochs_run=m.get("epoch"), best_epoch=m.get("best_epoch"), val_auc=m.get("best_val_auc"),
            val_accuracy=m.get("best_val_accuracy"), val_sensitivity=m.get("best_val_sensitivity"),
            val_specificity=m.get("best_val_specificity"), test_threshold=m.get("best_threshold"),
            **{f"test_{k}": metrics.get(f"test_{k}") for k in TEST_KEYS},
            wall_s=m.get("time_total_s"), hostname=m.get("hostname"),
            error=None if result.error is None else str(result.error)[:500],
            checkpoint_path=best_checkpoint_path(result)))
        if p is not None:
            p = p.copy()
            for col, val in (("seed", seed), ("model", ms.model), ("arm", arm.name)):
                p.insert(0, col, val)
            preds.append(p)
    return rows, preds
