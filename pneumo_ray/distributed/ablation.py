"""The ablation driver: data once (leakage audit of the pre-training data included), Ray up, one
seed-grid experiment per model for the arm, Parquet out, the statistics printed.

`run_ablation(sweep, ablation, data, out)` takes frozen settings only: the training lengths, search
space and resources (SweepConfig), the arm, seeds and configuration protocol (AblationSpec), the
arm's study data (DataSpec, what every worker re-opens) and where results go (OutputSpec).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
import time
from pathlib import Path

import pandas as pd

from pneumo_ray.analysis.verdicts import format_summary, summarize
from pneumo_ray.config.arms import AblationSpec, Arm
from pneumo_ray.config.data import DataSpec
from pneumo_ray.config.errors import UserError
from pneumo_ray.config.output import OutputSpec
from pneumo_ray.config.sweep import SweepConfig
from pneumo_ray.config.train import TrainConfig
from pneumo_ray.data import leakage as audit
from pneumo_ray.data.study_data import load_study_data
from pneumo_ray.distributed import ensembles, interrupts
from pneumo_ray.distributed.ensembles import ABLATION, validation_rows, write_validation
from pneumo_ray.distributed.replicates import ArmConfig, base_configs, best_tuned, run_seeds, seed_rows
from pneumo_ray.distributed.sweep import check_data, init_ray, run_record, with_cache_dir
from pneumo_ray.distributed.trials import evaluate_trials, max_concurrent_trials, run_model_sweep, trial_rows
from pneumo_ray.storage import provenance
from pneumo_ray.storage.atomic import atomic_write
from pneumo_ray.storage.results import command_line, read_results, read_table, upsert_parquet, write_run_json
from pneumo_ray.train import store as pretrain_store

KEYS = dict(
    ablations=["arm", "model", "seed"],
    ablation_predictions=["arm", "model", "seed", "path"],
    audit_summary=["arm", "a_set", "b_set"],
    ablation_tuning=["arm", "model", "trial_id"],
    ablation_tuning_epochs=["arm", "model", "trial_id", "epoch"],
)
# settings every arm in one results folder must share, or the arms would not be comparable (the
# configuration protocol too: a tuned arm against an untuned one is not a fair comparison)
SHARED = (
    "preset",
    "data_root",
    "pretrain_root",
    "image_size",
    "epochs",
    "pretrain_epochs",
    "batch_size",
    "split_seed",
    "val_fraction",
    "config_protocol",
    "search_space",
)


def table(out: Path, name: str) -> pd.DataFrame:
    """`read_table`, with a damaged file as the user's one line naming it (its only ValueError)."""
    try:
        return read_table(out, name)
    except ValueError as e:
        raise UserError(str(e)) from None


def check_compatible(out: Path, settings: dict) -> None:
    """The arms already in `out` ran with the same shared settings (SHARED), or UserError."""
    run = out / "run.json"
    if not run.exists():
        return
    before = json.loads(run.read_text()).get("settings", {})
    for k in ("data_root", "pretrain_root"):  # recorded as given before they were made absolute
        if before.get(k) is not None:
            before[k] = str(Path(before[k]).resolve())
    diff = {k: (before.get(k), settings.get(k)) for k in SHARED if k in before and before.get(k) != settings.get(k)}
    if diff:
        changes = ", ".join(f"{k}: {a} → {b}" for k, (a, b) in diff.items())
        raise UserError(
            f"--name {out}: holds arms run with other settings ({changes}); "
            "arms are only comparable with the same settings: use another --name"
        )


def best_from(path: str | None, models: tuple[str, ...]) -> tuple[pd.DataFrame | None, dict]:
    """The best trial per model of the sweep in `path` and its recorded sweep settings; UserError,
    naming --from, for a folder that is not a finished sweep of every one of `models`."""
    if path is None:
        return None, {}
    try:
        res = read_results(path)
    except FileNotFoundError:
        raise UserError(f"--from {path}: no such folder; give a finished study.sweep results folder") from None
    except ValueError as e:  # read_results' only ValueErrors: a damaged table or run.json
        raise UserError(f"--from {path}: {str(e).splitlines()[0]}") from None
    if res.trials.empty:
        raise UserError(f"--from {path}: no trials.parquet (is it a finished study.sweep folder?)")
    best = res.best_trials()
    lacking = [m for m in models if m not in set(best["model"])]
    if lacking:
        raise UserError(
            f"--from {path}: no finished {' or '.join(lacking)} trial to take a configuration from; "
            f"give --models with the models it has ({', '.join(sorted(set(best['model']))) or 'none'})"
        )
    return best, res.run.get("sweep", {})


def known_configs(sweep: SweepConfig, ablation: AblationSpec, out: Path) -> tuple[dict[str, ArmConfig], list[str]]:
    """The configurations known before any training ({model: ArmConfig}) and the models whose
    per-arm search still has to run (--tune without a finished search of this arm in `out`)."""
    arm = ablation.arm
    if ablation.tune:
        tuned, configs, to_tune = table(out, "ablation_tuning"), {}, []
        for model in sweep.models:
            mine = tuned[(tuned.arm == arm.name) & (tuned.model == model)] if len(tuned) else tuned
            if len(mine) and not mine["stop_reason"].eq("interrupted").any():  # a search cut short goes on
                base = arm.apply(sweep.base_config(model))
                configs[model] = best_tuned(mine, arm, base, arm.searched(sweep.searched()))
            else:
                to_tune.append(model)
        return configs, to_tune
    best, from_sweep = best_from(ablation.from_, sweep.models)
    if from_sweep and from_sweep.get("image_size") != sweep.image_size:
        print(
            f"warning: --from {ablation.from_} searched at {from_sweep.get('image_size')} px, this ablation runs "
            f"at {sweep.image_size} px",
            file=sys.stderr,
        )
    tuned_for = None
    if from_sweep:  # the arm the sweep's configuration was searched for
        tuned_for = "transfer" if from_sweep.get("pretrain_epochs") else "no-pretrain"
    configs = {
        m: ArmConfig(arm.apply(ac.config), ac.source, ac.tuned_for)
        for m, ac in base_configs(sweep, best, ablation.from_, tuned_for).items()
    }
    return configs, []


def check_recorded(done: pd.DataFrame, arm: Arm, model: str, ac: ArmConfig, out: Path) -> None:
    """An arm's seeds already in `out` must have run at the same configuration."""
    mine = done[(done.arm == arm.name) & (done.model == model)] if len(done) else done
    if not len(mine):
        return
    # a field this version added is at its default in rows written before it (the ingredients: off)
    recorded = {**TrainConfig().to_dict(), **json.loads(mine.iloc[0]["config"])}
    recorded.pop("seed")
    wanted = {k: v for k, v in ac.config.to_dict().items() if k != "seed"}
    if recorded != wanted:
        changes = ", ".join(f"{k}: {recorded.get(k)} → {v}" for k, v in wanted.items() if recorded.get(k) != v)
        raise UserError(
            f"--name {out}: arm {arm.name}/{model} was run with another configuration ({changes}; recorded "
            f"from {mine.iloc[0]['config_source']}); its seeds are only comparable at one: use another --name"
        )


def check_interrupted(storage: str, experiments: dict[str, str], resume: bool) -> None:
    """UserError if one of the Tune `experiments` ({name: what it runs}) under `storage` was
    interrupted and `resume` is not set: a fresh run would not complete it. Reads the storage only
    (Tuner.can_restore needs no running Ray), so it is checked before anything is written."""
    if resume or ("://" not in storage and not Path(storage).is_dir()):
        return  # the usual first run: nothing there, and no Ray Tune import
    import ray.tune

    for exp, what in experiments.items():
        path = os.path.join(storage, exp)
        if ray.tune.Tuner.can_restore(path):
            raise UserError(
                f"{path}: an interrupted {what}; pass --resume to complete it, or start anew under another --name"
            )


def tune_arm(
    model: str,
    arm: Arm,
    sweep: SweepConfig,
    out: OutputSpec,
    *,
    budget: int,
    source_hash: str | None,
    data: DataSpec,
    storage: str,
    store: Path,
    concurrency: int,
    prov: dict,
) -> ArmConfig:
    """The arm's own Optuna search (same space minus what the arm fixes, `budget` trials, ASHA on
    validation AUC); its trials go to ablation_tuning*.parquet (with the provenance `prov` of this
    session, storage/provenance.py), its best configuration is returned.
    An interrupted search is resumed only with `out.resume` (run_ablation checks it before Ray)."""
    base = arm.apply(sweep.base_config(model))
    searched = arm.searched(sweep.searched())
    tsweep = dataclasses.replace(sweep, num_samples=budget)
    exp = tune_experiment(arm, model)
    check_interrupted(storage, {exp: f"search of arm {arm.name}, {model}"}, out.resume)  # checked before Ray too
    print(
        f"\n=== arm {arm.name}, {model}: its own search, {budget} trial(s) over {', '.join(searched)} "
        f"({concurrency} at a time; validation AUC only, ASHA)"
    )
    ms = run_model_sweep(
        model,
        tsweep,
        source_hash=source_hash,
        data=data,
        storage=storage,
        store=store,
        exp_name=exp,
        resume=out.resume,
        concurrency=concurrency,
        base=base,
        searched=searched,
        optuna_db=out.folder / "optuna.db",
        verbose=out.verbose,
    )
    trials, epochs, _ = trial_rows(ms, tsweep, out.preset, source_hash, {}, base=base)
    folder = out.folder
    trials = pd.DataFrame(provenance.stamp(trials, prov))
    trials.insert(0, "arm", arm.name)
    with interrupts.shielded():
        upsert_parquet(folder / "ablation_tuning.parquet", trials, KEYS["ablation_tuning"])
        if epochs:
            ep = pd.concat(epochs, ignore_index=True)
            ep.insert(0, "arm", arm.name)
            upsert_parquet(folder / "ablation_tuning_epochs.parquet", ep, KEYS["ablation_tuning_epochs"])
    interrupts.check()  # stopped: the search's trials so far are written, its cut ones as `interrupted`
    ac = best_tuned(trials, arm, base, searched)
    print(f"arm {arm.name}, {model}: {ac.source}: " + ", ".join(f"{k}={getattr(ac.config, k):.4g}" for k in searched))
    return ac


def run_ablation(sweep: SweepConfig, ablation: AblationSpec, data: DataSpec, out: OutputSpec) -> int:
    """Run the arm's missing seeds (after its own search with `ablation.tune`) into `out.folder`,
    holding the folder's lock; print the statistics of every arm there. Returns the exit status: 0, 1
    without rows, 130/143 after SIGINT/SIGTERM (interrupts.py: the search's trials cut are recorded as
    `interrupted`, seeds only once all of the arm's have finished, and the line printed says how to
    resume). A user's mistake (settings or a configuration other than the folder's arms', an
    interrupted run without --resume) is a UserError raised before anything is written or Ray starts."""
    command = command_line()
    resume = command if out.resume else shlex.join([*shlex.split(command), "--resume"])
    session = interrupts.Session(out.folder, total=None, resume=resume, again=command)
    return session.run(lambda: _run_ablation(sweep, ablation, data, out, session))


def _run_ablation(
    sweep: SweepConfig, ablation: AblationSpec, data: DataSpec, out: OutputSpec, session: interrupts.Session
) -> int:
    arm, seeds = ablation.arm, list(ablation.seeds)
    if arm.pretrains and sweep.pretrain_epochs == 0:
        raise UserError(f"arm {arm.name} pre-trains, but --pretrain-epochs is 0: use --no-pretrain for that arm")
    check_data(data, arm.data_spec(sweep, data))
    t_start = time.time()
    folder, name = out.folder, out.name
    settings = dict(
        preset=out.preset,
        data_root=data.data_root,
        pretrain_root=data.pretrain_root,
        image_size=sweep.image_size,
        epochs=sweep.epochs,
        pretrain_epochs=sweep.pretrain_epochs,
        batch_size=sweep.batch_size,
        split_seed=sweep.seed,
        val_fraction=sweep.val_fraction,
        config_protocol=ablation.protocol,
    )
    if ablation.tune:
        settings["search_space"] = dict(
            sweep.search_ranges(), grace_period=sweep.grace_period, reduction_factor=sweep.reduction_factor
        )
    check_compatible(folder, settings)
    configs, to_tune = known_configs(sweep, ablation, folder)
    done = table(folder, "ablations")
    todo = {}
    for model in sweep.models:
        if model in configs:
            check_recorded(done, arm, model, configs[model], folder)
        mine = done[(done.arm == arm.name) & (done.model == model)] if len(done) else done
        missing = [s for s in seeds if s not in set(mine["seed"] if len(mine) else [])]
        if missing:
            todo[model] = missing
    if not todo:
        print(f"arm {arm.name}: seeds {seeds} of {', '.join(sweep.models)} already in {folder}; nothing to run")
        if ablation.ensemble:
            ensembles.after_run(folder, ablation.ensemble, only=lambda pool: pool.arm == arm.name)
        return print_summary(folder)
    storage = out.ray_storage
    experiments = {tune_experiment(arm, m): f"search of arm {arm.name}, {m}" for m in to_tune if m in todo}
    for model, missing in todo.items():
        experiments[seeds_experiment(arm, model, missing)] = f"run of arm {arm.name}, {model}, seeds {missing}"
    check_interrupted(storage, experiments, out.resume)
    session.total = sum(len(missing) + (ablation.tune if m in to_tune else 0) for m, missing in todo.items())

    session.hold(command_line())  # one writer per results folder: a second command is refused
    data = with_cache_dir(data)
    store = pretrain_store.folder(data.cache_dir)
    print(f"ablation {name}, arm {arm.name}: preparing data (decoded once, shared through the cache {data.cache_dir})")
    study = load_study_data(data)
    for problem in study.info["problems"]:
        print(f"warning: {problem}", file=sys.stderr)
    if study.source is not None:
        sets = {
            "target-train": study.train,
            "target-val": study.val,
            "target-test": study.test,
            "pretraining": study.source,
        }
        _, summary = audit.audit(sets)
        summary.insert(0, "arm", arm.name)
        upsert_parquet(folder / "audit_summary.parquet", summary, KEYS["audit_summary"])
        leak = summary[(summary.a_set == "pretraining") & summary.b_set.isin(["target-val", "target-test"])]
        print(
            "leakage audit of the pre-training images against the target's validation and test sets:\n"
            + leak[["b_set", "a_images", "by_name", "by_patient", "by_content"]].to_string(index=False)
        )
    source_hash = study.info.get("source_manifest_hash") if data.use_pretrain else None
    previous = json.loads((folder / "run.json").read_text()) if (folder / "run.json").exists() else {}
    prov = provenance.run_provenance(study.info)  # what makes this session's rows (run.json and every row)
    session = dict(
        arm=arm.name,
        provenance=prov,
        seeds=todo,
        started=time.strftime("%Y-%m-%dT%H:%M:%S"),
        resumed=out.resume,
        configs={
            m: dict(config=c.config.to_dict(), source=c.source, tuned_for=c.tuned_for) for m, c in configs.items()
        },
        sweep=dataclasses.asdict(sweep),
        data={k: v for k, v in study.info.items() if k != "problems"},
    )
    info = dict(
        name=name,
        kind="ablation",
        settings=settings,
        sessions=previous.get("sessions", []) + [session],
        args=run_record(data, out, storage),
    )
    write_run_json(folder, **info)

    ray = init_ray(out.address, folder / "logs", out.verbose)
    print(f"Ray's own output: {folder / 'logs'}/ray.log" + ("" if out.verbose else " (--verbose shows it live)"))
    try:
        resources = ray.cluster_resources()
        concurrency = max_concurrent_trials(resources, sweep.cpus_per_trial, sweep.gpus_per_trial, sweep.max_concurrent)
        for model, missing in todo.items():
            if model in to_tune:
                t0 = time.time()
                configs[model] = tune_arm(
                    model,
                    arm,
                    sweep,
                    out,
                    prov=prov,
                    budget=ablation.tune,
                    source_hash=source_hash,
                    data=data,
                    storage=storage,
                    store=store,
                    concurrency=concurrency,
                )
                check_recorded(done, arm, model, configs[model], folder)
                session.setdefault("tuning_seconds", {})[model] = round(time.time() - t0, 1)
                session["configs"][model] = dict(
                    config=configs[model].config.to_dict(),
                    source=configs[model].source,
                    tuned_for=configs[model].tuned_for,
                )
                write_run_json(folder, **info)
            ac = configs[model]
            cfg = ac.config
            print(
                f"\n=== arm {arm.name}, {model}: seeds {missing} ({concurrency} at a time); configuration "
                f"{ac.source}; {cfg.pretrain_epochs} pre-training + {cfg.epochs} fine-tuning epochs at "
                f"{cfg.image_size}px"
            )
            ms = run_seeds(
                model,
                cfg,
                missing,
                sweep,
                source_hash=source_hash,
                data=data,
                storage=storage,
                store=store,
                exp_name=seeds_experiment(arm, model, missing),
                resume=out.resume,
                concurrency=concurrency,
                verbose=out.verbose,
            )
            interrupts.check()  # stopped: no rows for an arm's seeds until all of them finished
            print("evaluating each seed's best-validation checkpoint on test")
            evaluated = evaluate_trials(ms, sweep, data, storage)
            rows, preds = seed_rows(ms, arm, ac, out.preset, sweep.seed, source_hash, evaluated)
            rows = provenance.stamp(rows, prov)
            members = {r["trial_id"]: dict(arm=arm.name, model=model, seed=r["seed"]) for r in rows}
            with interrupts.shielded():
                upsert_parquet(folder / "ablations.parquet", pd.DataFrame(rows), KEYS["ablations"])
                if preds:
                    upsert_parquet(
                        folder / "ablation_predictions.parquet",
                        pd.concat(preds, ignore_index=True),
                        KEYS["ablation_predictions"],
                    )
                write_validation(folder, ABLATION, validation_rows(evaluated, members))
            interrupts.check()  # a signal during the evaluation: the arm's rows are complete, stop here
            session.setdefault("seconds_per_model", {})[model] = round(ms.seconds, 1)
    finally:
        ray.shutdown()
    session["seconds"] = round(time.time() - t_start, 1)
    write_run_json(folder, **info)
    if ablation.ensemble:
        ensembles.after_run(folder, ablation.ensemble, only=lambda pool: pool.arm == arm.name)
    return print_summary(folder)


def tune_experiment(arm: Arm, model: str) -> str:
    """The Tune experiment of the arm's own search for `model` (a folder under the Ray storage)."""
    return f"tune-{arm.name}-{model}"


def seeds_experiment(arm: Arm, model: str, seeds: list[int]) -> str:
    """The Tune experiment running `seeds` of the arm for `model`."""
    return f"{arm.name}-{model}-seeds-{'_'.join(map(str, seeds))}"


def print_summary(out: Path) -> int:
    abl, preds = table(out, "ablations"), table(out, "ablation_predictions")
    if abl.empty:
        print(f"{out}: no ablation rows yet (ablations.parquet missing or empty)", file=sys.stderr)
        return 1
    for line in provenance.differing(abl, ["arm", "model", "seed"]):  # one line per differing condition
        print(f"warning: {out / 'ablations.parquet'}: {line}", file=sys.stderr)
    failed = abl[abl["error"].notna()]
    if len(failed):
        print(
            f"warning: {len(failed)} run(s) failed and are left out: "
            + ", ".join(f"{r.arm}/{r.model}/seed {r.seed}" for r in failed.itertuples()),
            file=sys.stderr,
        )
    summary = summarize(abl, preds)
    atomic_write(out / "ablation_summary.parquet", lambda p: summary.to_parquet(p, index=False))
    print("\n" + format_summary(summary))
    for line in ensembles.summary_lines(out):
        print(line)
    audit_path = out / "audit_summary.parquet"
    if audit_path.exists():
        a = pd.read_parquet(audit_path)
        a = a[(a.a_set == "pretraining") & a.b_set.isin(["target-val", "target-test"])]
        print(
            "\npre-training images also in the target's validation/test sets (name, patient or content):\n"
            + a[["arm", "b_set", "a_images", "any"]].to_string(index=False)
        )
    print(f"\nresults: {out}/ablations.parquet, ablation_predictions.parquet, ablation_summary.parquet")
    return 0
