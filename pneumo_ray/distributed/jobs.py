"""Ray Train layer: the unchanged core loop (`protocol.pretrain` / `protocol.finetune`) run by
`TorchTrainer` workers (DDP through `ray.train.torch.prepare_model`).

Workers receive the run's frozen dataclasses as they are (TrainConfig, DataSpec; Ray pickles them).
Each worker re-opens the study data from the decoded cache (a memory map: no JPEG is decoded
again) and trains on its shard. A trial is one Ray Train job: when the content-addressed store lacks
its pre-training, the job's workers compute it first (under the key's lock) and write it there, so
every trial with the same key reuses it.

A one-worker job runs in Ray Train's local mode (`ScalingConfig(num_workers=0)`): the worker function
runs in the Tune trial's own process, which Tune keeps for the next trial, so a trial starts no
process (a worker group costs a controller and a worker process, each importing torch: 12-21 s of
the 2-core machine's time per trial). Its epochs then go to Tune directly (`ray.tune.report`, with
the same checkpoint), and a restarted trial resumes from Tune's checkpoint. Jobs of two or more
workers (DDP) start a worker group, whose reports reach Tune through `TuneReportCallback`.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import pandas as pd
from filelock import FileLock

from pneumo_ray.config.data import DataSpec
from pneumo_ray.config.sweep import Resources
from pneumo_ray.config.train import TrainConfig
from pneumo_ray.data.study_data import StudyData, load_study_data
from pneumo_ray.storage import provenance
from pneumo_ray.train import checkpoints
from pneumo_ray.train import store as pretrain_store
from pneumo_ray.train.conditions import training_conditions
from pneumo_ray.train.loop import TrainingState
from pneumo_ray.train.protocol import finetune, pretrain, pretrain_key, test_evaluation, validation_summary

if TYPE_CHECKING:
    import pyarrow.fs
    import torch
    from ray.train import RunConfig, ScalingConfig
    from ray.tune import Callback


def _worker_context(in_process: bool) -> tuple[int, int, torch.device]:
    """(rank, world size, device). A one-worker job in the Tune trial's process is rank 0 of 1 (Ray
    refuses `ray.train.get_context`, `report` and `get_checkpoint` there: Tune's own API serves)."""
    import logging

    import ray.train
    import ray.train.torch

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # not every report and checkpoint at INFO
    if in_process:
        return 0, 1, ray.train.torch.get_device()
    ctx = ray.train.get_context()
    return ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device()


def _where() -> dict:
    """Where this worker runs. Tune fills `pid` and `hostname` of every result with its trial's process
    (for a DDP job, a process that trains nothing), so the worker's own go under names of their own."""
    import ray

    return dict(
        worker_hostname=socket.gethostname(),
        node_id=ray.get_runtime_context().get_node_id(),
        worker_pid=os.getpid(),
    )


def finetune_worker(config: dict) -> None:
    """train_loop_per_worker of a fine-tuning trial.

    Every epoch reports the validation metrics that Tune and ASHA act on, with a checkpoint (rank 0)
    of the full training state and of the best-validation weights so far (with the loss's decision
    threshold and the normalization): a restarted worker group resumes after the last epoch, and
    the best-validation checkpoint exists even when ASHA ends the trial early. The test set is not
    touched here: `evaluate_checkpoint` applies the checkpoint to test once, after the trial.
    """
    worker_started = time.time()
    import torch

    to_tune = bool(config.get("in_process"))  # a one-worker job in the Tune trial's process
    rank, world, device = _worker_context(to_tune)
    cfg: TrainConfig = config["train_config"]
    context_ready = time.time()
    data = load_study_data(config["data"], quiet=True, log=None)
    data_ready = time.time()
    init_state, pre_meta, pre_stats = None, {}, {}
    if config.get("store") and cfg.pretrain_epochs > 0:
        init_state, pre_meta, pre_stats = shared_pretraining(
            cfg,
            data,
            device,
            rank=rank,
            world=world,
            store=Path(config["store"]),
            source_hash=config["source_hash"],
            wrap=_wrap(to_tune),
        )
    best: dict = {}
    conditions = training_conditions(device, world)
    fixed = dict(
        _where(),
        world_size=world,
        # what trained this row (storage/provenance.py): torch, device, threads, code, ...
        **{**provenance.worker_columns(conditions), "torch_threads": torch.get_num_threads()},
        worker_started_at=worker_started,
        worker_context_s=round(context_ready - worker_started, 3),
        data_open_s=round(data_ready - context_ready, 3),
        **pre_stats,
        **config.get("extra", {}),
    )

    def metrics(st: TrainingState) -> dict:
        """This epoch's metrics, with those of the best epoch so far at the loss's threshold."""
        result, rec = st.result, st.result.history[-1]
        if rec["best_epoch"] == rec["epoch"] or not best:  # a new best, or the first epoch after a restart
            best.clear()
            summary = validation_summary(data, result.best_val_probs, result.threshold)
            best.update({f"best_{k}": v for k, v in summary.items() if isinstance(v, (int, float))})
            best["best_val_loss"] = next(h["val_loss"] for h in result.history if h["epoch"] == result.best_epoch)
        return {**_numbers(rec), **best, **fixed, "reported_at": time.time()}

    def best_weights(folder: Path, st) -> None:
        r = st.result
        checkpoints.save_weights(
            folder / "best.safetensors",
            r.best_state,
            dict(
                config=cfg.to_dict(),
                pretrain_key=pre_meta.get("key"),
                conditions=conditions,
                best_epoch=r.best_epoch,
                threshold=best["best_threshold"],
                val_auc=r.best_val_auc,
                normalize=dict(mean=r.normalize.mean, std=r.normalize.std),
            ),
        )

    finetune(
        cfg,
        data,
        device,
        init_state=init_state,
        rank=rank,
        world=world,
        wrap=_wrap(to_tune),
        on_state=lambda st: report_with_state(metrics(st), st, rank, extra=best_weights, to_tune=to_tune),
        resume=resumed_state(to_tune=to_tune),
        log=None,
    )


def _wrap(in_process: bool):
    """DDP through `prepare_model` in a worker group; none for the one-worker job in the trial's
    process (`prepare_model` would only move the model to the device, which the loop does, and Ray
    refuses its context lookup inside a Tune trial)."""
    import ray.train.torch

    return None if in_process else ray.train.torch.prepare_model


def shared_pretraining(
    cfg: TrainConfig,
    data: StudyData,
    device: torch.device,
    *,
    rank: int,
    world: int,
    store: Path,
    source_hash: str,
    wrap: Callable | None = None,
) -> tuple[dict, dict, dict]:
    """(weights, metadata, what to report) of the content-addressed pre-training `cfg` starts from.

    The key holds the conditions this job trains under (torch version, device, threads, code, ...:
    conditions.training_conditions). The store has a usable entry: read it. It has none, or one that
    store.check refuses (made under other recorded conditions, or its weights changed): this job's
    workers compute it first, in the same worker group as the fine-tuning, while rank 0 holds the
    key's lock, so trials sharing the key wait and reuse it; a refused entry is overwritten, with one
    warning line saying why. Its full training state goes to `<store>/<key>.partial/` every epoch, so
    a restarted worker group resumes it after the last epoch; its epochs are not reported to Tune
    (ASHA acts on fine-tuning epochs only)."""
    import ray.train.collective

    # rank 0's conditions for every rank: one entry per job, even if its workers' machines differ
    conditions = ray.train.collective.broadcast_from_rank_zero(training_conditions(device, world))
    key = pretrain_key(cfg, source_hash, conditions)
    entry = pretrain_store.Entry.of(store, key)
    t0 = time.time()
    lock = FileLock(str(entry.lock))
    if rank == 0:
        store.mkdir(parents=True, exist_ok=True)
        lock.acquire()  # filelock: exclusive across processes and nodes (also on NFS/EFS)
    try:
        waited = time.time() - t0
        refused = pretrain_store.check(entry, conditions) if rank == 0 else None
        if refused:
            print(f"warning: pre-training store entry {entry.weights}: {refused}; computing it again", flush=True)
        compute = ray.train.collective.broadcast_from_rank_zero(refused is not None or not entry.weights.exists())
        if compute:
            partial = entry.partial / checkpoints.STATE_FILE
            resume = checkpoints.load_training_state(entry.partial) if partial.exists() else None

            def keep(st: TrainingState) -> None:
                if rank == 0:
                    checkpoints.save_training_state(entry.partial, st)

            state, meta = pretrain(
                cfg,
                data,
                device,
                rank=rank,
                world=world,
                wrap=wrap,
                on_state=keep,
                resume=resume,
                log=None,
            )
            if rank == 0:
                meta.update(_where())
                pretrain_store.write(entry, state, meta, conditions)
                shutil.rmtree(entry.partial, ignore_errors=True)
        ray.train.collective.barrier()
        state, meta = pretrain_store.read(entry, conditions)  # the seed saves and reloads: so do we
    finally:
        if rank == 0:
            lock.release()
    stats = dict(
        pretrain_key=key,
        pretrain_computed=bool(compute),
        pretrain_resumed_after_epoch=meta.get("resumed_after_epoch") if compute else None,
        pretrain_refused=refused if rank == 0 else None,
        pretrain_wait_s=round(waited, 2),
        pretrain_s=round(time.time() - t0, 2),
    )
    return state, meta, stats


def _numbers(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if isinstance(v, (int, float, str))}


def resumed_state(to_tune: bool = False) -> TrainingState | None:
    """The training state of the job's last checkpoint, after Ray Train restarted its worker group
    (a killed worker, a lost node) or a new run of the same name continues it; None on a first start.
    `to_tune`: a one-worker job in the trial's process, whose checkpoints are the Tune trial's own
    (Tune restarts the trial from its last one)."""
    import ray.train
    import ray.tune

    ckpt = ray.tune.get_checkpoint() if to_tune else ray.train.get_checkpoint()
    if ckpt is None:
        return None
    with ckpt.as_directory() as d:
        return checkpoints.load_training_state(Path(d) / "state")


def report_with_state(
    metrics: dict,
    state: TrainingState,
    rank: int,
    extra: Callable[[Path, TrainingState], None] | None = None,
    to_tune: bool = False,
) -> None:
    """Report an epoch's metrics with a checkpoint of the full training state (rank 0 writes it; every
    rank reports, as DDP needs), so a restarted worker group loses at most the epoch under way.
    `extra(folder, state)` adds files to the checkpoint (the fine-tuning's best-validation weights,
    which the test evaluation applies). Ray keeps only the latest checkpoint of a job.
    `to_tune`: a one-worker job in the trial's process reports to the Tune trial itself."""
    import ray.train
    import ray.tune

    report, checkpoint = (ray.tune.report, ray.tune.Checkpoint) if to_tune else (ray.train.report, ray.train.Checkpoint)
    if rank != 0:
        report(dict(metrics))
        return
    with tempfile.TemporaryDirectory() as tmp:
        checkpoints.save_training_state(Path(tmp) / "state", state)
        if extra is not None:
            extra(Path(tmp), state)
        report(dict(metrics), checkpoint=checkpoint.from_directory(tmp))


class Evaluated(NamedTuple):
    """A best-validation checkpoint applied once after its trial: test metrics and per-image test
    predictions, and its per-image validation predictions (from which ensembles are chosen)."""

    metrics: dict
    predictions: pd.DataFrame
    val_predictions: pd.DataFrame


def evaluate_checkpoint(
    checkpoint_path: str, data_spec: DataSpec, storage_filesystem: pyarrow.fs.FileSystem | None = None
) -> Evaluated:
    """Apply a trial's best-validation checkpoint, with its decision threshold, to test, and to
    validation in the same way (same model load; an ensemble chooses its members on these).
    `trials.evaluate_trials` runs it in the driver on a one-node cluster, else as a Ray task with the
    trial's resources."""
    from ray.train import Checkpoint

    from pneumo_ray.train.augment import Normalize
    from pneumo_ray.train.loop import pick_device
    from pneumo_ray.train.models import build_model

    with Checkpoint(checkpoint_path, filesystem=storage_filesystem).as_directory() as d:
        state, meta = checkpoints.load_weights(Path(d) / "best.safetensors")
    cfg = TrainConfig(**meta["config"])
    data = load_study_data(data_spec, quiet=True, log=None)
    device = pick_device("auto")
    model = build_model(cfg.model)
    model.load_state_dict(state)
    model, normalize, threshold = model.to(device), Normalize(**meta["normalize"]), meta["threshold"]
    metrics, preds = test_evaluation(model, data, normalize, threshold, device, cfg.tta)
    # validation through the very function that made the test predictions (and with the same
    # test-time augmentation that selected it), so both are made alike
    val_data = dataclasses.replace(data, test=data.val)
    _, val_preds = test_evaluation(model, val_data, normalize, threshold, device, cfg.tta)
    return Evaluated(metrics, preds, val_preds)


def in_process(res: Resources) -> bool:
    """Whether a trial's job runs in the trial's own process (Ray Train local mode): one worker."""
    return res.workers == 1


def scaling(res: Resources) -> ScalingConfig:
    """ScalingConfig for one job: the trial's CPUs and GPUs split evenly over its workers; a one-worker
    job runs in local mode (`num_workers=0`), on the resources Tune gave the trial."""
    from ray.train import ScalingConfig

    if in_process(res):
        return ScalingConfig(num_workers=0)
    per = {"CPU": res.cpus / res.workers}
    if res.gpus:
        per["GPU"] = res.gpus / res.workers
    return ScalingConfig(
        num_workers=res.workers,
        use_gpu=bool(res.gpus),
        resources_per_worker=per,
        placement_strategy=res.placement_strategy,
    )


def train_run_config(name: str, storage: str, callbacks: Iterable[Callback] = (), max_failures: int = 1) -> RunConfig:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig

    return RunConfig(
        name=name,
        storage_path=storage,
        failure_config=FailureConfig(max_failures=max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=1),
        callbacks=list(callbacks),
    )
