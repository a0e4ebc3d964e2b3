"""The sweep driver: data once, Ray up, one Tune experiment per model, Parquet out, a summary.

`run_sweep(sweep, data, out)` takes the three frozen settings the command line builds (or
`--resume` rebuilds from run.json with `specs_from_run`); the DataSpec it is given is what every
Ray worker re-opens.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
import time
from pathlib import Path
from types import ModuleType

from pneumo_ray.config.data import DataSpec
from pneumo_ray.config.errors import Interrupted
from pneumo_ray.config.ingredients import described
from pneumo_ray.config.output import OutputSpec
from pneumo_ray.config.search import SEARCHED
from pneumo_ray.config.sweep import SweepConfig
from pneumo_ray.data import cache
from pneumo_ray.data.study_data import load_study_data
from pneumo_ray.distributed import ensembles, interrupts
from pneumo_ray.distributed.ensembles import SWEEP, validation_rows, write_validation
from pneumo_ray.distributed.trials import (
    ModelSweep,
    evaluate_trials,
    max_concurrent_trials,
    run_model_sweep,
    trial_rows,
)
from pneumo_ray.storage import provenance
from pneumo_ray.storage.results import command_line, read_results, write_run_json, write_tables
from pneumo_ray.train import store as pretrain_store

REPO = Path(__file__).resolve().parents[2]


def init_ray(address: str | None, logs: Path | None = None, verbose: bool = False) -> ModuleType:
    """Connect to `address` / $RAY_ADDRESS, or start a local Ray (with its dashboard: Ray Train V2
    needs the State API to clean up finished trials' placement groups). With `logs`, Ray's own output
    goes to `logs`/ray.log (and, with `verbose`, to the console as well)."""
    import ray

    # Report latency: Train hands results to Tune once per health-check interval (2 s by default).
    # A report only waits when the previous one is still queued, so 1 s costs nothing for epochs
    # longer than that, while a shorter interval keeps the controller busy on a small machine.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "1.0")
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Ray's distributed tqdm replaces builtins.print in the driver the first time it shows any worker's
    # line (also one that arrives during ray.init, before quiet_ray routes them to the log); nothing
    # here uses it, and Tune then cannot pickle a callback that holds print
    os.environ.setdefault("RAY_TQDM_PATCH_PRINT", "0")
    env = {k: os.environ[k] for k in ("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "PNEUMO_RAY_CACHE") if k in os.environ}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    # No address: a new local Ray, as documented ("local"). ray.init() without one would join the
    # cluster the last `ray start` on this machine recorded in /tmp/ray, even a dead one, and then
    # refuse the _system_config below with a traceback.
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    # A local Ray on a small machine: skip the per-process metrics export that the dashboard agent
    # and raylet otherwise do every few seconds (measured: it slows training epochs on 2 cores).
    extra = {"_system_config": {"enable_metrics_collection": False}} if address == "local" else {}
    kwargs = dict(address=address, runtime_env={"env_vars": env}, log_to_driver=True, logging_level="WARNING")
    if logs is not None and not verbose:
        from pneumo_ray.distributed.console import quiet_ray_init

        with quiet_ray_init(logs):  # ray.init's own notices (token auth, dashboard) go to the log too
            ray.init(**kwargs, **extra)
    else:
        ray.init(**kwargs, **extra)
    interrupts.reinstall()  # SIGINT/SIGTERM back to the driver's handlers (ray.init set its own for SIGTERM)
    if logs is not None:
        from pneumo_ray.distributed.console import quiet_ray

        quiet_ray(logs, verbose)
    return ray


def with_cache_dir(data: DataSpec) -> DataSpec:
    """`data` with its cache folder pinned: every worker on every node must use the driver's."""
    return data if data.cache_dir else data.replace(cache_dir=str(cache.default_cache_dir()))


def check_data(data: DataSpec, expected: DataSpec) -> None:
    """The DataSpec must be the sweep's (or arm's): the same image size, split and source choice."""
    diff = [
        f"{f.name}={getattr(data, f.name)!r} (expected {getattr(expected, f.name)!r})"
        for f in dataclasses.fields(DataSpec)
        if getattr(data, f.name) != getattr(expected, f.name)
    ]
    if diff:
        raise ValueError(f"the data settings disagree with the run's: {', '.join(diff)}")


def run_record(data: DataSpec, out: OutputSpec, storage: str) -> dict:
    """run.json's record of where the data and results are (`args`: the name earlier versions gave it),
    from which `specs_from_run` rebuilds the DataSpec and OutputSpec on --resume."""
    return dict(
        data_root=data.data_root,
        pretrain_root=data.pretrain_root,
        allow_test_overlap=data.allow_overlap,
        source_subset=data.source_subset,
        cache_dir=data.cache_dir,
        storage=storage,
        preset=out.preset,
        address=out.address,
        results=out.results,
    )


def specs_from_run(run: dict, out: OutputSpec) -> tuple[SweepConfig, DataSpec, OutputSpec]:
    """The settings of the sweep recorded in run.json, to resume it: its SweepConfig, the DataSpec
    its workers used and the OutputSpec `out` with the recorded storage and preset. A damaged
    run.json (a key missing, a value of the wrong type or out of range) is a UserError naming it."""
    from pneumo_ray.config.errors import UserError

    def damaged(problem: str) -> UserError:
        path = out.folder / "run.json"
        return UserError(f"--resume: {path} is damaged ({problem}); restore it or start anew under another --name")

    recorded, saved = run.get("sweep"), run.get("args", {})
    if not isinstance(recorded, dict):
        raise damaged("no 'sweep' object with the sweep's settings")
    unknown = sorted(set(recorded) - {f.name for f in dataclasses.fields(SweepConfig)})
    if unknown:
        raise damaged(f"unknown sweep settings: {', '.join(map(str, unknown))}")
    if not isinstance(saved, dict):
        raise damaged("'args' is not an object")
    paths = ("data_root", "pretrain_root", "cache_dir", "storage", "preset")
    wrong = [k for k in paths if not isinstance(saved.get(k), (str, type(None)))]
    if wrong:
        raise damaged(f"args {', '.join(wrong)}: not a string")
    try:
        sweep = SweepConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in recorded.items()})
        data = sweep.data_spec(DataSpec.from_record(saved))
    except (UserError, TypeError) as e:  # a value the checks refuse, or of a type they cannot compare
        raise damaged(f"{type(e).__name__}: {e}") from None
    return sweep, data, out.replace(storage=saved.get("storage"), preset=saved.get("preset"))


def run_sweep(sweep: SweepConfig, data: DataSpec, out: OutputSpec) -> int:
    """Run (or, with `out.resume`, finish) the sweep into `out.folder`, holding the folder's lock;
    returns the exit status: 0, or 130/143 after SIGINT/SIGTERM (interrupts.py: the trials cut are
    recorded as `interrupted`, and the line printed says how to resume)."""
    check_data(data, sweep.data_spec(data))
    session = interrupts.Session(
        out.folder, total=sweep.num_samples * len(sweep.models), resume=resume_command(out), again=command_line()
    )
    return session.run(lambda: _run_sweep(sweep, data, out, session))


def resume_command(out: OutputSpec) -> str:
    """The command that finishes this sweep (its settings come from run.json)."""
    args = ["python", "-m", "study.sweep", "--resume", "--name", out.name]
    args += ["--results", str(out.results)] if str(out.results) != "results" else []
    return shlex.join(args + (["--address", out.address] if out.address else []))


def _run_sweep(sweep: SweepConfig, data: DataSpec, out: OutputSpec, session: interrupts.Session) -> int:
    t_start = time.time()
    folder, name = out.folder, out.name
    session.hold(command_line())  # one writer per results folder: a second command is refused
    data = with_cache_dir(data)
    store = pretrain_store.folder(data.cache_dir)
    storage = out.ray_storage
    if data.data_root is None and out.preset == "cpu":
        print("note: --preset cpu without --data-root runs on the synthetic phantoms", file=sys.stderr)
    print(f"sweep {name}: preparing data (decoded once, shared with every trial through the cache {data.cache_dir})")
    study = load_study_data(data)
    for problem in study.info["problems"]:
        print(f"warning: {problem}", file=sys.stderr)
    print(
        f"  {study.train.describe()}\n  {study.val.describe()}\n  {study.test.describe()}"
        + (f"\n  {study.source.describe()}" if study.source is not None else "")
    )
    # every invocation (the first run and each --resume) is one session, so time spent is not lost
    run_json = folder / "run.json"
    previous = json.loads(run_json.read_text()).get("sessions", []) if run_json.exists() else []
    prov = provenance.run_provenance(study.info)  # what makes this session's rows (run.json and every row)
    session = dict(started=time.strftime("%Y-%m-%dT%H:%M:%S"), resumed=out.resume, provenance=prov)
    run_info = dict(
        name=name,
        preset=out.preset,
        sweep=dataclasses.asdict(sweep),
        args=run_record(data, out, storage),
        data=study.info,
        status="running",
        sessions=previous + [session],
    )
    write_run_json(folder, **run_info)

    logs = folder / "logs"
    ray = init_ray(out.address, logs, out.verbose)
    try:
        resources = ray.cluster_resources()
        nodes = len([n for n in ray.nodes() if n["Alive"]])  # the cluster the sweep started on
        concurrency = max_concurrent_trials(resources, sweep.cpus_per_trial, sweep.gpus_per_trial, sweep.max_concurrent)
        print(
            f"Ray cluster: {resources.get('CPU', 0):g} CPU, {resources.get('GPU', 0):g} GPU on "
            f"{nodes} node(s); {concurrency} concurrent trial(s) of "
            f"{sweep.workers_per_trial} worker(s), {sweep.cpus_per_trial:g} CPU, {sweep.gpus_per_trial:g} GPU\n"
            f"Ray's own output: {logs}/ray.log{'' if out.verbose else ' (--verbose shows it live)'}\n"
            f"Optuna studies: optuna-dashboard sqlite:///{(folder / 'optuna.db').resolve()}"
        )
        source_hash = study.info.get("source_manifest_hash") if data.use_pretrain else None
        per_model = {}
        for model in sweep.models:
            on = described(sweep)
            print(
                f"\n=== {model}: {sweep.num_samples} trial(s), {sweep.pretrain_epochs} pre-training + "
                f"{sweep.epochs} fine-tuning epochs at {sweep.image_size}px" + (f"; every trial {on}" if on else "")
            )
            ms = run_model_sweep(
                model,
                sweep,
                source_hash=study.info.get("source_manifest_hash"),
                data=data,
                storage=storage,
                store=store,
                exp_name=f"{name}-{model}",
                resume=out.resume,
                concurrency=concurrency,
                optuna_db=folder / "optuna.db",
                verbose=out.verbose,
            )
            evaluated = {} if interrupts.requested() else evaluate_unless_interrupted(ms, sweep, data, storage)
            trials, epochs, preds = trial_rows(ms, sweep, out.preset, source_hash, evaluated)
            trials = provenance.stamp(trials, prov)
            with interrupts.shielded():
                write_tables(folder, trials, epochs, preds)
                write_validation(
                    folder, SWEEP, validation_rows(evaluated, {t: dict(trial_id=t, model=model) for t in evaluated})
                )
            interrupts.check()  # stopped: the rows so far are written (without test metrics), the rest waits
            per_model[model] = round(ms.seconds, 1)
        cluster = dict(
            resources={k: v for k, v in resources.items() if k in ("CPU", "GPU", "memory")},
            nodes=nodes,
            concurrency=concurrency,
        )
    finally:
        ray.shutdown()
    if sweep.ensemble:
        ensembles.after_run(folder, sweep.ensemble)
    session.update(seconds=round(time.time() - t_start, 1), seconds_per_model=per_model)
    write_run_json(
        folder,
        **{
            **run_info,
            "status": "finished",
            "cluster": cluster,
            "seconds": round(sum(s.get("seconds", 0) for s in run_info["sessions"]), 1),
        },
    )
    print_summary(folder)
    return 0


def evaluate_unless_interrupted(ms: ModelSweep, sweep: SweepConfig, data: DataSpec, storage: str) -> dict:
    """`evaluate_trials`, or nothing if SIGINT/SIGTERM cuts it: the rows are then written without test
    metrics, and --resume evaluates again."""
    print(f"evaluating the best-validation checkpoint of each {ms.model} trial on test")
    try:
        return evaluate_trials(ms, sweep, data, storage)
    except Interrupted:
        return {}


def print_summary(out: Path) -> None:
    res = read_results(out)
    t = res.trials
    print(f"\nsweep finished: {len(t)} trial(s) in {out}")
    print(t.groupby(["model", "stop_reason"]).size().to_string())
    if "pretrain_key" in t and t["pretrain_key"].notna().any():
        computed = int(t["pretrain_computed"].fillna(False).astype(bool).sum())
        print(
            f"pre-trainings: {t.groupby('model')['pretrain_key'].nunique().to_dict()} distinct key(s) per model; "
            f"computed by {computed} trial(s), reused by the rest"
        )
    best = res.best_trials()
    cols = [
        "model",
        "trial_id",
        "best_val_auc",
        "test_auc",
        "test_accuracy",
        "test_balanced_accuracy",
        "test_sensitivity",
        "test_specificity",
        "test_f1",
        "test_threshold",
        *SEARCHED,
        "epochs_run",
    ]
    if len(best):
        print("\nbest trial per model (chosen on validation AUC; test metrics of its best-validation checkpoint):")
        print(best[[c for c in cols if c in best]].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    for line in ensembles.summary_lines(out):
        print(line)
    more = "".join(f", {t}.parquet" for t in ("val_predictions", "ensemble") if (out / f"{t}.parquet").exists())
    print(f"\nresults: {out}/trials.parquet, epochs.parquet, predictions.parquet{more}, run.json")
