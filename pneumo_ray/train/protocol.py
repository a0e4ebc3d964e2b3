"""Pretrain → save → reload → fine-tune → evaluate: the seed study's protocol, as library calls.

Each step is its own function so that the Ray layer can run pre-training once (content-addressed)
and fine-tuning per trial, with the same code as `run_study`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pneumo_ray.analysis.metrics import binary_metrics
from pneumo_ray.config.ingredients import described
from pneumo_ray.config.train import TrainConfig, stable_id
from pneumo_ray.data.split import patient_grouped_split
from pneumo_ray.data.study_data import StudyData
from pneumo_ray.storage.atomic import atomic_write
from pneumo_ray.train import checkpoints
from pneumo_ray.train.augment import Normalize
from pneumo_ray.train.conditions import training_conditions
from pneumo_ray.train.loop import FitResult, Phase, TrainingState, evaluate, fit, predict, seed_everything
from pneumo_ray.train.models import build_model, freeze_backbone

Wrap = Callable[[torch.nn.Module], torch.nn.Module]  # e.g. ray.train.torch.prepare_model (DDP)
OnEpoch = Callable[[dict, torch.nn.Module, FitResult], object]  # after every epoch (Ray reports from it)
OnState = Callable[[TrainingState], object]  # after every epoch, before OnEpoch: the state to resume from
Log = Callable[[str], object]


def pretrain_phase(cfg: TrainConfig) -> Phase:
    """Pre-training: its own epochs, learning rate and augmentation; inverse-frequency class weights."""
    return Phase(
        name="pretrain",
        epochs=cfg.pretrain_epochs,
        lr=cfg.pretrain_lr,
        batch_size=cfg.batch_size,
        aug_strength=cfg.pretrain_aug_strength,
        hflip=cfg.hflip,
        class_weight="auto",
        class_weight_scale=1.0,
        optimizer=cfg.optimizer,
        weight_decay=cfg.weight_decay,
        schedule=cfg.schedule,
        seed=cfg.seed,
    )


def finetune_phase(cfg: TrainConfig) -> Phase:
    """Fine-tuning: the searched learning rate, augmentation strength and class weight, and the
    ingredients (config/ingredients.py; pre-training has none of them, so it is shared)."""
    return Phase(
        name="finetune",
        epochs=cfg.epochs,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        aug_strength=cfg.aug_strength,
        hflip=cfg.hflip,
        class_weight=cfg.class_weight,
        class_weight_scale=cfg.class_weight_scale,
        optimizer=cfg.optimizer,
        weight_decay=cfg.weight_decay,
        schedule=cfg.schedule,
        seed=cfg.seed,
        ema=cfg.ema,
        mixup=cfg.mixup,
        label_smoothing=cfg.label_smoothing,
        photometric=cfg.photometric,
        tta=cfg.tta,
    )


def pretrain_key(cfg: TrainConfig, source_hash: str, conditions: dict) -> str:
    """Content address of a pre-training: same model, pre-training config, source data and seed, trained
    under the same conditions (conditions.training_conditions: torch version, device, threads, code, ...)
    → the same weights on the CPU, so one run serves every fine-tuning that shares the key."""
    return stable_id(dict(cfg.pretrain_part(), source=source_hash, conditions=conditions), 16)


def pretrain(
    cfg: TrainConfig,
    data: StudyData,
    device: torch.device,
    *,
    rank: int = 0,
    world: int = 1,
    wrap: Wrap | None = None,
    on_epoch: OnEpoch | None = None,
    on_state: OnState | None = None,
    resume: TrainingState | None = None,
    resident: bool | None = None,
    compile: bool | str = False,
    log: Log | None = print,
) -> tuple[dict, dict]:
    """Train a fresh model on the source data; returns (final state dict, metadata).

    As the seed, the weights after the last epoch are kept; a patient-grouped hold-out of the source
    is evaluated every epoch only to show how pre-training goes. `on_state`, `resume`, `resident` and
    `compile` go to `fit` as they are: a resumed pre-training ends with the weights (and history) of
    an uninterrupted one. The metadata holds the content key and the conditions it was trained under."""
    if data.source is None:
        raise ValueError("pre-training asked for, but the study data has no source set")
    conditions = training_conditions(device, world)
    seed_everything(cfg.seed)
    tr, va = patient_grouped_split(data.source.labels, data.source.manifest["patient"], 0.1, cfg.seed)
    model = build_model(cfg.model).to(device)
    if wrap is not None:
        model = wrap(model)
    result = fit(
        model,
        data.source.subset(tr, "source-train"),
        data.source.subset(va, "source-val"),
        pretrain_phase(cfg),
        device=device,
        rank=rank,
        world=world,
        on_epoch=on_epoch,
        on_state=on_state,
        resume=resume,
        resident=resident,
        compile=compile,
        log=log,
    )
    state = {k: v.detach().cpu() for k, v in getattr(model, "module", model).state_dict().items()}
    meta = dict(
        kind="pretrain",
        config=cfg.pretrain_part(),
        key=pretrain_key(cfg, data.info["source_manifest_hash"], conditions),
        conditions=conditions,
        resumed_after_epoch=resume.epoch if resume is not None else None,
        source=data.info.get("source"),
        source_manifest_hash=data.info["source_manifest_hash"],
        normalize=dict(mean=result.normalize.mean, std=result.normalize.std),
        final_source_val_auc=result.history[-1].get("val_auc"),
        history=result.history,
    )
    return state, meta


def finetune(
    cfg: TrainConfig,
    data: StudyData,
    device: torch.device,
    *,
    init_state: dict | None = None,
    rank: int = 0,
    world: int = 1,
    wrap: Wrap | None = None,
    on_epoch: OnEpoch | None = None,
    on_state: OnState | None = None,
    resume: TrainingState | None = None,
    resident: bool | None = None,
    compile: bool | str = False,
    log: Log | None = print,
) -> tuple[torch.nn.Module, FitResult]:
    """Fresh model ← pre-trained weights (if any) → fine-tune on target train, validate every epoch.
    `on_state`, `resume`, `resident` and `compile` go to `fit` as they are (with `resume`, the weights
    come from the state: `init_state` is then overwritten)."""
    seed_everything(cfg.seed + 1)
    model = build_model(cfg.model)
    if init_state is not None:
        model.load_state_dict(init_state, strict=True)
    if cfg.freeze_backbone:
        freeze_backbone(model)
    model = model.to(device)
    if wrap is not None:
        model = wrap(model)
    result = fit(
        model,
        data.train,
        data.val,
        finetune_phase(cfg),
        device=device,
        rank=rank,
        world=world,
        on_epoch=on_epoch,
        on_state=on_state,
        resume=resume,
        resident=resident,
        compile=compile,
        log=log,
    )
    return model, result


def validation_summary(data: StudyData, val_probs: np.ndarray, threshold: float) -> dict:
    """The validation metrics at the loss's decision threshold (`metrics.decision_threshold`, fixed
    before any score is seen; validation does not choose it)."""
    metrics = {f"val_{k}": v for k, v in binary_metrics(data.val.labels, val_probs, threshold).items()}
    metrics["threshold"] = threshold
    return metrics


def test_evaluation(
    model: torch.nn.Module,
    data: StudyData,
    normalize: Normalize,
    threshold: float,
    device: torch.device,
    tta: bool = False,
) -> tuple[dict, pd.DataFrame]:
    """Apply a model and its decision threshold (fixed by the training loss) to the test set, with
    the test-time augmentation that validation used to select it (`tta`)."""
    test_probs = predict(model, data.test, normalize=normalize, device=device, tta=tta)
    metrics = {f"test_{k}": v for k, v in binary_metrics(data.test.labels, test_probs, threshold).items()}
    preds = pd.DataFrame(
        dict(
            path=data.test.manifest["path"],
            name=data.test.manifest["name"],
            label=data.test.labels,
            probability=test_probs,
            prediction=(test_probs >= threshold).astype(int),
        )
    )
    return metrics, preds


def final_evaluation(
    cfg: TrainConfig, data: StudyData, result: FitResult, device: torch.device
) -> tuple[dict, pd.DataFrame]:
    """Best-validation weights (the weight EMA's with `cfg.ema`) → the loss's decision threshold →
    applied to validation and test (both with `cfg.tta`'s views).

    Returns (metrics with val_* and test_* keys, per-test-image predictions)."""
    model = build_model(cfg.model).to(device)
    model.load_state_dict(result.best_state)
    val_probs = result.best_val_probs
    if val_probs is None:
        val = evaluate(model, data.val, normalize=result.normalize, weights=result.weights, device=device, tta=cfg.tta)
        val_probs = val["probs"]
    metrics = validation_summary(data, val_probs, result.threshold)
    test_metrics, preds = test_evaluation(model, data, result.normalize, metrics["threshold"], device, cfg.tta)
    metrics.update(test_metrics, best_epoch=result.best_epoch)
    return metrics, preds


def run_study(
    cfg: TrainConfig,
    data: StudyData,
    out_dir: str | os.PathLike,
    device: torch.device,
    log: Log = print,
    *,
    compile: bool | str = False,
) -> dict:
    """One pretrain → finetune run without Ray; writes metrics.json, predictions.parquet,
    history.parquet and the weights (safetensors + JSON) under out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    init_state, pre_meta = None, None
    if cfg.pretrain_epochs > 0 and data.source is not None:
        log(f"pre-training {cfg.model} on {data.source.describe()}")
        init_state, pre_meta = pretrain(cfg, data, device, log=log, compile=compile)
        path = checkpoints.save_weights(out / "pretrain.safetensors", init_state, pre_meta)
        # the seed saves the pre-trained weights and reloads them into a fresh model: so do we
        init_state, _ = checkpoints.load_weights(path)
    else:
        log("no pre-training: fine-tuning starts from random initialisation")
    on = described(cfg)
    log(
        f"fine-tuning {cfg.model} on {data.train.describe()}; validating on {data.val.describe()}"
        + (f"; ingredients {on}" if on else "")
    )
    _, result = finetune(cfg, data, device, init_state=init_state, log=log, compile=compile)
    metrics, preds = final_evaluation(cfg, data, result, device)
    metrics.update(
        model=cfg.model,
        pretrained=init_state is not None,
        seconds=round(time.time() - t0, 1),
        pretrain_key=pre_meta["key"] if pre_meta else None,
        config=cfg.to_dict(),
        data=data.info,
        device=str(device),
        conditions=training_conditions(device),
    )
    checkpoints.save_weights(
        out / "finetune.safetensors",
        result.best_state,
        dict(
            kind="finetune",
            config=cfg.to_dict(),
            best_epoch=result.best_epoch,
            normalize=dict(mean=result.normalize.mean, std=result.normalize.std),
            threshold=metrics["threshold"],
            pretrain_key=metrics["pretrain_key"],
        ),
    )
    history = [*(pre_meta["history"] if pre_meta else []), *result.history]
    atomic_write(out / "history.parquet", lambda p: pd.DataFrame(history).to_parquet(p, index=False))
    atomic_write(out / "predictions.parquet", lambda p: preds.to_parquet(p, index=False))
    atomic_write(out / "metrics.json", lambda p: p.write_text(json.dumps(metrics, indent=2, default=_json_default)))
    return metrics


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    return str(o)
