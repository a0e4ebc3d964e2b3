"""Ray Tune layer: one Tune trial = one Ray Train job (its shared, content-addressed pre-training
first when the store lacks it, then the fine-tuning); Optuna (TPE, seeded) proposes configurations,
ASHA stops poor trials early. Tune reuses a trial's process for the next trial (`reuse_actors`): a
one-worker job runs in it (Ray Train local mode), so after the first trial of each slot no process
starts and no torch is imported again.

A trial gets its fixed settings as one frozen `TrialSpec` (base TrainConfig, DataSpec, resources;
Ray pickles it) and the values Optuna proposed as Tune's config; its TrainConfig is the base with
those values, passed on to the Ray Train workers as it is.

What Optuna sees, deliberately: `best_val_auc`, the best validation AUC the trial reached so far.
ASHA compares trials on the same value at each rung. For a trial ASHA stopped, Optuna thus learns
the best it did before being stopped: a lower bound for that configuration, never a test number.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from pneumo_ray.config.data import DataSpec
from pneumo_ray.config.search import SEARCH
from pneumo_ray.config.sweep import Resources, SweepConfig
from pneumo_ray.config.train import TrainConfig
from pneumo_ray.distributed import interrupts
from pneumo_ray.distributed.jobs import (
    evaluate_checkpoint,
    finetune_worker,
    in_process,
    scaling,
    train_run_config,
)
from pneumo_ray.storage import provenance

if TYPE_CHECKING:
    import ray.tune
    from ray.tune import Result

METRIC = "best_val_auc"


def search_space(sweep: SweepConfig) -> dict:
    """Tune's search space, one entry per row of config/search.py that the sweep searches, in the
    table's (sampling) order: an ingredient's row with an empty range is left out."""
    from ray import tune

    space = {}
    for s in SEARCH:
        values = getattr(sweep, s.range_field)
        if not values:
            continue
        if s.categorical:
            space[s.field] = tune.choice(list(values))
        else:
            space[s.field] = (tune.loguniform if s.log else tune.uniform)(*values)
    return space


def max_concurrent_trials(cluster: dict, cpus_per_trial: float, gpus_per_trial: float, cap: int = 0) -> int:
    """How many trials fit at once on a cluster with `cluster` resources ({"CPU": n, "GPU": m}).

    A trial needs `cpus_per_trial` CPUs and `gpus_per_trial` GPUs in all (fractions allowed): its own
    process holds them for a one-worker job, its workers for a DDP job (the trial then needs none)."""
    fits = []
    if cpus_per_trial > 0:
        fits.append(math.floor(cluster.get("CPU", 0) / cpus_per_trial + 1e-9))
    if gpus_per_trial > 0:
        fits.append(math.floor(cluster.get("GPU", 0) / gpus_per_trial + 1e-9))
    n = min(fits) if fits else 1
    if n < 1:
        raise ValueError(
            f"one trial needs {cpus_per_trial} CPU and {gpus_per_trial} GPU, but the cluster has "
            f"{cluster.get('CPU', 0)} CPU and {cluster.get('GPU', 0)} GPU"
        )
    return min(n, cap) if cap else n


@dataclass(frozen=True, kw_only=True)
class TrialSpec:
    """What every trial of one experiment shares: the base configuration and which of its fields
    the trial's Tune config sets, the data, the pre-training store, the storage and the resources."""

    base: TrainConfig
    searched: tuple[str, ...]  # TrainConfig fields set from Tune's config (searched values, or seed)
    data: DataSpec
    source_hash: str | None  # the pre-training source's manifest hash; None = no pre-training
    store: Path  # content-addressed pre-trained weights
    storage: str  # Ray Tune/Train storage
    resources: Resources


def trial_fn(config: dict, spec: TrialSpec) -> None:
    """The Tune trial: shared pre-training (if the key is new), then the fine-tuning job.
    `config` holds the searched values; `spec` the experiment's fixed settings.
    Nothing runs after the fine-tuning `fit()`: ASHA may end the trial inside it."""
    started = time.time()
    import ray.tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = ray.tune.get_context().get_trial_id()
    imported = time.time()
    cfg = spec.base.replace(**{k: config[k] for k in spec.searched})
    local = in_process(spec.resources)
    # when each step of the trial began (bench/ray_overhead.py turns these into the fixed-cost breakdown)
    extra = dict(trial_started_at=started, trial_imports_s=round(imported - started, 3), trainer_started_at=time.time())
    trainer = TorchTrainer(
        finetune_worker,
        # the job pre-trains first when the store lacks the key (jobs.shared_pretraining)
        train_loop_config=dict(
            train_config=cfg,
            data=spec.data,
            extra=extra,
            store=str(spec.store) if spec.source_hash else None,
            source_hash=spec.source_hash,
            in_process=local,
        ),
        scaling_config=scaling(spec.resources),
        run_config=train_run_config(
            f"finetune-{trial_id}",
            spec.storage,
            # a worker group's reports reach Tune through the callback; the local job reports to Tune itself
            callbacks=[] if local else [TuneReportCallback()],
            max_failures=spec.resources.max_failures,
        ),
    )
    try:
        trainer.fit()
    finally:
        if local:  # the process serves the next trial: hand back this one's memory (and GPU cache) now
            _release_memory()


def _release_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class ModelSweep:
    model: str
    experiment_path: str
    results: object = None  # ray.tune.ResultGrid
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)
    # the trials SIGINT/SIGTERM cut, which --resume continues: {trial folder name: (trial id, config)}
    cut: dict = field(default_factory=dict)


def run_model_sweep(
    model: str,
    sweep: SweepConfig,
    *,
    source_hash: str | None,
    data: DataSpec,
    storage: str,
    store: Path,
    exp_name: str,
    resume: bool,
    concurrency: int,
    base: TrainConfig | None = None,
    searched: list[str] | None = None,
    optuna_db: Path | None = None,
    verbose: bool = False,
    callbacks: Sequence[object] = (),
) -> ModelSweep:
    """Run (or resume) one model's Tune experiment; returns its ResultGrid.

    `base` is the configuration the trials start from (default: the sweep's for `model`) and
    `searched` the names of `search_space` that Optuna varies (default: all of them); an ablation
    arm that fixes a hyper-parameter (no augmentation, no class weights, no pre-training) searches
    the rest with the same ranges and budget.

    `optuna_db`: the SQLite file of Optuna's own storage; the study is named `exp_name`, so
    `optuna-dashboard sqlite:///<optuna_db>` shows it while it runs and after, and `optuna.load_study`
    reads it back (each Optuna trial carries the Tune trial id as user attribute `tune_trial_id`).
    `callbacks`: more Tune callbacks (bench/ray_overhead.py times each trial from the driver's side)."""
    import ray.tune
    from ray.tune.schedulers import ASHAScheduler

    from pneumo_ray.distributed.console import TrialLines
    from pneumo_ray.distributed.search import close_lost_trials, optuna_search

    exp_path = os.path.join(storage, exp_name)
    space = search_space(sweep)
    searched = list(space) if searched is None else list(searched)
    spec = TrialSpec(
        base=base or sweep.base_config(model),
        searched=tuple(searched),
        data=data,
        source_hash=source_hash,
        store=store,
        storage=storage,
        resources=sweep.resources,
    )
    trainable = trial_trainable(spec)
    t0 = time.time()
    if resume and restorable(exp_path):
        # the trials a stop cut go on from their checkpoints; a failed trial stays failed, as Optuna has it
        tuner = ray.tune.Tuner.restore(
            exp_path, trainable=trainable, resume_unfinished=True, resume_errored=False, restart_errored=False
        )
    else:
        tuner = ray.tune.Tuner(
            trainable,
            param_space={k: space[k] for k in searched},
            tune_config=tune_config(
                concurrency,
                search_alg=optuna_search(sweep.seed, exp_name, optuna_db),
                metric=METRIC,
                mode="max",
                num_samples=sweep.num_samples,
                scheduler=ASHAScheduler(
                    time_attr="epoch",
                    max_t=sweep.epochs,
                    grace_period=sweep.grace_period,
                    reduction_factor=sweep.reduction_factor,
                ),
            ),
            run_config=tune_run_config(
                exp_name,
                storage,
                verbose=verbose,
                max_failures=sweep.max_failures,
                lines=TrialLines(
                    model, epochs=sweep.epochs, num_samples=sweep.num_samples, concurrency=concurrency, shown=searched
                ),
                callbacks=callbacks,
            ),
        )
    grid, cut = interrupts.fit(tuner, exp_path)
    if optuna_db is not None:
        close_lost_trials(optuna_db, exp_name, {trial_id for trial_id, _ in cut.values()})
    return ModelSweep(model, exp_path, grid, time.time() - t0, cut=cut)


def restorable(exp_path: str) -> bool:
    """Whether Tune saved the experiment's state at least once, so that Tuner.restore can continue it.
    (Tuner.can_restore only looks for tuner.pkl, written when the Tuner is built: restoring one that a
    stop cut before Tune's first save fails for want of the search space; it is started anew.)"""
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(exp_path if "://" in exp_path else os.path.abspath(exp_path))
    found = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    return any(Path(f.path).name.startswith("experiment_state-") for f in found)


def tune_config(concurrency: int, **search: object) -> ray.tune.TuneConfig:
    """The TuneConfig of an experiment (a sweep's model with its searcher and ASHA in `search`, an arm's
    seeds with none): at most `concurrency` trials at once, and the next trial runs in the process the
    last one used (`reuse_actors`), so it starts no process and imports nothing."""
    import ray.tune

    return ray.tune.TuneConfig(max_concurrent_trials=concurrency, reuse_actors=True, **search)


def tune_run_config(
    exp_name: str, storage: str, *, verbose: bool, max_failures: int, lines: object, callbacks: Sequence[object] = ()
) -> ray.tune.RunConfig:
    """The Tune RunConfig of an experiment (a sweep's model, an arm's seeds): Tune's own status only
    with `verbose` (the `lines` callback prints the per-trial lines), a trial whose actor died with
    its node run again (its Train job resumes from its checkpoint), and a SIGINT/SIGTERM acted on
    between checkpoint saves (tune_stop.py)."""
    import ray.tune

    from pneumo_ray.distributed.tune_stop import StopBetweenSaves

    return ray.tune.RunConfig(
        name=exp_name,
        storage_path=storage,
        verbose=1 if verbose else 0,
        failure_config=ray.tune.FailureConfig(max_failures=max_failures),
        # a one-worker trial's checkpoints are Tune's: each holds the full state and the best weights
        # so far, so the latest is all a restart or the test evaluation needs
        checkpoint_config=ray.tune.CheckpointConfig(num_to_keep=1),
        callbacks=[lines, StopBetweenSaves(), *callbacks],
    )


def trial_trainable(spec: TrialSpec) -> Callable[[dict], None]:
    """`trial_fn` bound to `spec`, as Tune runs it, with the resources its process needs: the job's
    CPUs and GPUs when the one-worker job runs in it; none when it only waits on a DDP worker group
    (a 0-CPU bundle needs some resource to be valid, hence the token memory), so concurrency is set
    by the workers' resources alone."""
    import ray.tune

    res = spec.resources
    need = {"cpu": res.cpus, "gpu": res.gpus} if in_process(res) else {"cpu": 0, "memory": 64 * 1024**2}
    return ray.tune.with_resources(ray.tune.with_parameters(trial_fn, spec=spec), need)


# when each step of a trial began or how long it took, as the trial and its worker report them
TIMING_KEYS = (
    "trial_started_at",
    "trial_imports_s",
    "pretrain_wait_s",
    "pretrain_s",
    "trainer_started_at",
    "worker_started_at",
    "worker_context_s",
    "data_open_s",
)

TEST_KEYS = (
    "auc",
    "accuracy",
    "sensitivity",
    "specificity",
    "precision",
    "f1",
    "balanced_accuracy",
    "tn",
    "fp",
    "fn",
    "tp",
)


def _storage_filesystem(storage: str):
    """pyarrow filesystem for an s3://, gs://… storage URI; None for a local or mounted path."""
    if "://" not in storage:
        return None
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(storage)[0]


def best_checkpoint_path(result: Result) -> str | None:
    """The trial's last reported checkpoint, which holds its best-validation weights so far. A worker
    group's checkpoints are Ray Train's (their paths come through the reports: the last report itself
    may carry none, so look through all); a one-worker job's are the Tune trial's own."""
    df = result.metrics_dataframe
    if df is not None and "checkpoint_path" in df and df["checkpoint_path"].notna().any():
        return str(df["checkpoint_path"].dropna().iloc[-1])
    if (result.metrics or {}).get("checkpoint_path"):
        return result.metrics["checkpoint_path"]
    ckpt = getattr(result, "checkpoint", None)
    return None if ckpt is None else str(ckpt.path)


def evaluate_trials(ms: ModelSweep, sweep: SweepConfig, data: DataSpec, storage: str) -> dict:
    """Test metrics + predictions of every trial's best-validation checkpoint (the test set is applied
    once per trial, after the search). On a cluster of several nodes: parallel Ray tasks with a trial's
    resources. On a one-node cluster that is the driver's own machine the search is over, so the node's
    CPUs and GPUs are free, and the driver (which has torch, the model code and the data loaded) applies
    the checkpoints itself: a Ray task would start a new process and import all that again (4-9 s per
    model on 2 cores)."""
    import ray

    fs = _storage_filesystem(storage)
    paths = {(r.metrics or {}).get("trial_id"): best_checkpoint_path(r) for r in ms.results}
    paths = {tid: path for tid, path in paths.items() if path}
    if driver_is_the_cluster():
        return {tid: evaluate_checkpoint(path, data, fs) for tid, path in paths.items()}
    task = ray.remote(evaluate_checkpoint).options(
        num_cpus=sweep.cpus_per_trial, num_gpus=sweep.gpus_per_trial / sweep.workers_per_trial
    )
    refs = {tid: task.remote(path, data, fs) for tid, path in paths.items()}
    return {tid: ray.get(ref) for tid, ref in refs.items()}


def driver_is_the_cluster() -> bool:
    """Whether the Ray cluster is one node and that node is the driver's machine."""
    import ray

    alive = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    return alive == [ray.get_runtime_context().get_node_id()]


def epochs_with_unreported(epochs: pd.DataFrame, result: Result, ms: ModelSweep) -> pd.DataFrame:
    """The trial's epochs as Tune recorded them, plus any its job trained and checkpointed that never
    reached Tune: when a DDP trial's Tune process dies (its node lost) just after Ray Train took an
    epoch's report, the restarted trial resumes after that epoch and its report is gone. The
    checkpoint's training state holds every epoch's record; those rows have no `reported_at`."""
    if "epoch" not in epochs or not len(epochs):
        return epochs
    done = set(epochs["epoch"].astype(int))
    if done == set(range(1, max(done) + 1)):
        return epochs
    path = best_checkpoint_path(result)
    if path is None:
        return epochs
    from ray.train import Checkpoint

    from pneumo_ray.train.checkpoints import training_history

    try:
        with Checkpoint(path, filesystem=_storage_filesystem(ms.experiment_path)).as_directory() as d:
            history = training_history(Path(d) / "state")
    except (OSError, ValueError) as e:  # the gap stays, said once, the rest of the sweep is collected
        missing = f"epochs {sorted(done)} of {path}: the missing ones are not in its training state ({e})"
        warnings.warn(missing, stacklevel=2)
        return epochs
    lost = [{k: h.get(k) for k in epochs.columns if k in h} for h in history if int(h["epoch"]) not in done]
    return pd.concat([epochs, pd.DataFrame(lost)], ignore_index=True).sort_values("epoch", ignore_index=True)


def trial_rows(
    ms: ModelSweep,
    sweep: SweepConfig,
    preset: str,
    source_hash: str | None,
    evaluated: dict,
    base: TrainConfig | None = None,
) -> tuple[list, list, list]:
    """(trial rows, epoch rows, prediction frames) from one model's ResultGrid + test evaluations
    (`evaluated` may be empty: an ablation's per-arm tuning never looks at test)."""
    trials, epochs, preds = [], [], []
    for result in ms.results:
        m = result.metrics or {}
        cut = ms.cut.get(Path(result.path).name)  # (trial id, config) of a trial SIGINT/SIGTERM cut
        cfg = dict(result.config or (cut[1] if cut else {}))  # a trial cut before its first epoch has no result
        trial_id = m.get("trial_id") or (cut[0] if cut else Path(result.path).name)
        hist = result.metrics_dataframe if result.metrics_dataframe is not None else pd.DataFrame()
        if "epoch" in hist:
            # a driver killed outright (SIGKILL) just after an epoch's report, before its checkpoint was
            # committed, leaves a trial that trains that epoch again on --resume from the checkpoint
            # before it (the same numbers: training resumes bit for bit), and Tune's history then holds
            # it twice (SIGINT/SIGTERM wait for the commit: tune_stop.py)
            hist = hist.drop_duplicates("epoch", keep="last")
        epochs_run = int(hist["epoch"].max()) if "epoch" in hist else 0
        if result.error is not None:
            stop = "error"
        elif cut:  # not ASHA's doing: --resume continues it from its last checkpoint
            stop = "interrupted"
        elif epochs_run >= sweep.epochs:
            stop = "completed"
        else:
            stop = "early_stopped"
        start = base or sweep.base_config(ms.model)
        base_t = start.replace(**{k: cfg[k] for k in cfg if k in TrainConfig.__dataclass_fields__})
        row = dict(
            trial_id=trial_id,
            model=ms.model,
            preset=preset,
            seed=sweep.seed,
            **cfg,
            image_size=base_t.image_size,
            epochs=sweep.epochs,
            pretrain_epochs=base_t.pretrain_epochs,
            batch_size=base_t.batch_size,
            **provenance.from_report(m),  # what trained it: conditions, pre-training key, computed or reused
            epochs_run=epochs_run,
            stop_reason=stop,
            best_epoch=m.get("best_epoch"),
            best_val_auc=m.get("best_val_auc"),
            best_val_loss=m.get("best_val_loss"),
            test_threshold=m.get("best_threshold"),
            **{f"test_{k}": evaluated.get(trial_id, ({}, None))[0].get(f"test_{k}") for k in TEST_KEYS},
            wall_s=m.get("time_total_s"),
            epochs_s=float(hist["epoch_seconds"].sum()) if "epoch_seconds" in hist else None,
            **{k: m.get(k) for k in TIMING_KEYS},
            workers=sweep.workers_per_trial,
            cpus=sweep.cpus_per_trial,
            gpus=sweep.gpus_per_trial,
            hostname=m.get("worker_hostname"),  # rank 0's machine (Tune's `hostname` is its trial process's)
            node_id=m.get("node_id"),
            error=None if result.error is None else str(result.error)[:500],
            checkpoint_path=best_checkpoint_path(result),
        )
        trials.append(row)
        if len(hist):
            cols = [
                c
                for c in (
                    "epoch",
                    "train_loss",
                    "val_loss",
                    "val_auc",
                    "best_val_auc",
                    "lr",
                    "epoch_seconds",
                    "train_images_per_s",
                    "reported_at",
                    "worker_hostname",
                )
                if c in hist
            ]
            e = epochs_with_unreported(hist[cols].rename(columns={"worker_hostname": "hostname"}), result, ms)
            e.insert(0, "model", ms.model)
            e.insert(0, "trial_id", trial_id)
            epochs.append(e)
        p = evaluated.get(trial_id, ({}, None))[1]
        if p is not None:
            p = p.copy()
            p.insert(0, "model", ms.model)
            p.insert(0, "trial_id", trial_id)
            preds.append(p)
    return trials, epochs, preds
