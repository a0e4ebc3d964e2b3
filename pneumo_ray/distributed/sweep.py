"""The sweep driver: data once, Ray up, one Tune experiment per model, Parquet out, a summary."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from pneumo_ray.data import cache
from pneumo_ray.data.study_data import load_study_data
from pneumo_ray.distributed.jobs import data_args
from pneumo_ray.storage.results import read_results, write_run_json, write_tables
from pneumo_ray.config.sweep import SweepConfig
from pneumo_ray.distributed.trials import evaluate_trials, max_concurrent_trials, run_model_sweep, trial_rows

REPO = Path(__file__).resolve().parents[2]


def init_ray(address: str | None):
    """Connect to `address` / $RAY_ADDRESS, or start a local Ray (with its dashboard: Ray Train V2
    needs the State API to clean up finished trials' placement groups)."""
    import ray

    # Report latency: Train hands results to Tune once per health-check interval (2 s by default).
    # A report only waits when the previous one is still queued, so 1 s costs nothing for epochs
    # longer than that, while a shorter interval keeps the controller busy on a small machine.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "1.0")
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    env = {k: os.environ[k] for k in ("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "PNEUMO_RAY_CACHE") if k in os.environ}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    address = address or os.environ.get("RAY_ADDRESS")
    # A local Ray on a small machine: skip the per-process metrics export that the dashboard agent
    # and raylet otherwise do every few seconds (measured: it slows training epochs on 2 cores).
    extra = {} if address else {"_system_config": {"enable_metrics_collection": False}}
    ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=True, logging_level="WARNING", **extra)
    return ray


def run_sweep(sweep: SweepConfig, args, *, name: str, out: Path) -> int:
    t_start = time.time()
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(args.cache_dir).resolve() if args.cache_dir else cache.default_cache_dir().resolve()
    store = cache_dir / "pretrain"
    storage = args.storage or str((out / "ray").resolve())
    use_pretrain = sweep.pretrain_epochs > 0
    if args.data_root is None and args.preset == "cpu":
        print("note: --preset cpu without --data-root runs on the synthetic phantoms", file=sys.stderr)
    print(f"sweep {name}: preparing data (decoded once, shared with every trial through the cache {cache_dir})")
    data = load_study_data(args.data_root, args.pretrain_root, size=sweep.image_size, seed=sweep.seed,
                           val_fraction=sweep.val_fraction, use_pretrain=use_pretrain,
                           allow_overlap=args.allow_test_overlap, cache_dir=cache_dir)
    for problem in data.info["problems"]:
        print(f"warning: {problem}", file=sys.stderr)
    dargs = data_args(args.data_root, args.pretrain_root, size=sweep.image_size, seed=sweep.seed,
                      val_fraction=sweep.val_fraction, use_pretrain=use_pretrain,
                      allow_overlap=args.allow_test_overlap, cache_dir=cache_dir)
    print(f"  {data.train.describe()}\n  {data.val.describe()}\n  {data.test.describe()}"
          + (f"\n  {data.source.describe()}" if data.source is not None else ""))
    saved_args = dict(data_root=args.data_root, pretrain_root=args.pretrain_root,
                      allow_test_overlap=args.allow_test_overlap, cache_dir=str(cache_dir), storage=storage,
                      preset=args.preset, address=args.address, results=args.results)
    # every invocation (the first run and each --resume) is one session, so time spent is not lost
    previous = json.loads((out / "run.json").read_text()).get("sessions", []) if (out / "run.json").exists() else []
    session = dict(started=time.strftime("%Y-%m-%dT%H:%M:%S"), resumed=bool(args.resume))
    run_info = dict(name=name, preset=args.preset, sweep=dataclasses.asdict(sweep), args=saved_args, data=data.info,
                    status="running", sessions=previous + [session])
    write_run_json(out, **run_info)

    ray = init_ray(args.address)
    try:
        resources = ray.cluster_resources()
        concurrency = max_concurrent_trials(resources, sweep.cpus_per_trial, sweep.gpus_per_trial, sweep.max_concurrent)
        print(f"Ray cluster: {resources.get('CPU', 0):g} CPU, {resources.get('GPU', 0):g} GPU on "
              f"{len([n for n in ray.nodes() if n['Alive']])} node(s); {concurrency} concurrent trial(s) of "
              f"{sweep.workers_per_trial} worker(s), {sweep.cpus_per_trial:g} CPU, {sweep.gpus_per_trial:g} GPU")
        source_hash = data.info.get("source_manifest_hash") if use_pretrain else None
        per_model = {}
        for model in sweep.models:
            print(f"\n=== {model}: {sweep.num_samples} trial(s), {sweep.pretrain_epochs} pre-training + "
                  f"{sweep.epochs} fine-tuning epochs at {sweep.image_size}px")
            ms = run_model_sweep(model, sweep, source_hash=data.info.get("source_manifest_hash"), dargs=dargs,
                                 storage=storage, store=store, exp_name=f"{name}-{model}", resume=args.resume,
                                 concurrency=concurrency)
            print(f"evaluating the best-validation checkpoint of each {model} trial on test")
            trials, epochs, preds = trial_rows(ms, sweep, args.preset, source_hash, evaluate_trials(ms, sweep, dargs, storage))
            write_tables(out, trials, epochs, preds)
            per_model[model] = round(ms.seconds, 1)
        cluster = dict(resources={k: v for k, v in resources.items() if k in ("CPU", "GPU", "memory")},
                       nodes=len([n for n in ray.nodes() if n["Alive"]]), concurrency=concurrency)
    finally:
        ray.shutdown()
    session.update(seconds=round(time.time() - t_start, 1), seconds_per_model=per_model)
    write_run_json(out, **{**run_info, "status": "finished", "cluster": cluster,
                           "seconds": round(sum(s.get("seconds", 0) for s in run_info["sessions"]), 1)})
    print_summary(out)
    return 0


def print_summary(out: Path) -> None:
    res = read_results(out)
    t = res.trials
    print(f"\nsweep finished: {len(t)} trial(s) in {out}")
    print(t.groupby(["model", "stop_reason"]).size().to_string())
    if "pretrain_key" in t and t["pretrain_key"].notna().any():
        print(f"pre-trainings: {t.groupby('model')['pretrain_key'].nunique().to_dict()} distinct key(s) per model; "
              f"computed by {int(t['pretrain_computed'].fillna(False).astype(bool).sum())} trial(s), reused by the rest")
    best = res.best_trials()
    cols = ["model", "trial_id", "best_val_auc", "test_auc", "test_accuracy", "test_sensitivity", "test_specificity",
            "test_f1", "test_threshold", "aug_strength", "class_weight_scale", "lr", "pretrain_lr", "epochs_run"]
    if len(best):
        print("\nbest trial per model (chosen on validation AUC; test metrics of its best-validation checkpoint):")
        print(best[[c for c in cols if c in best]].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"\nresults: {out}/trials.parquet, epochs.parquet, predictions.parquet, run.json")
