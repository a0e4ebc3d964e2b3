"""pneumo-ray against a plain Optuna study: the same search, run both ways, walls side by side.

The same sweep (model, search space, trials, epochs, seed, data) runs
  pneumo-ray    `run_sweep`: Ray Tune + Optuna TPE (seeded) + ASHA over Ray Train jobs, one shared
                pre-training per key, then each trial's best-validation checkpoint applied to test;
  plain Optuna  one process, no Ray: `optuna.create_study(TPESampler(seed), SuccessiveHalvingPruner(
                min_resource=grace period, reduction_factor))` whose objective calls the project's
                own `protocol.pretrain` (once per pre-training key, kept in memory), `finetune` (it
                reports the best validation AUC so far every epoch, the value ASHA compares, and
                raises optuna.TrialPruned when the pruner says so) and, after the search,
                `final_evaluation` of every trial (test, as pneumo-ray does).
For each setting it prints both walls, the summed epoch times, the best validation AUC (and the
test AUC of that trial) of each, and wall(pneumo-ray) / wall(plain Optuna) beside the issue's target.

Settings: smoke = the smoke preset on the synthetic phantoms (cnn, 4 trials; target <= 2x);
cpu = the cpu preset on the real data, Kermany target + CoronaHack pre-training (cnn, 4 trials;
target <= 1.1x), skipped with a message when the data folders are absent.

Fair by construction: the decoded-image cache (--cache-dir, else $PNEUMO_RAY_CACHE, else
~/.cache/pneumo_ray) is warmed before either side is timed, so neither decodes an image; each side
then reads it through its own fresh folder of links, so neither finds the other's (or an earlier
run's) pre-trained weights. Each trial trains with the torch threads a pneumo-ray trial gets
(--cpus-per-trial per worker). The one difference left is the point of pneumo-ray: it runs as many
trials at once as the CPUs allow (2 on a 2-core machine), the plain study one after another.

The Ray half starts a local Ray (or joins $RAY_ADDRESS): run it where no other Ray is running.

    python bench/vs_optuna.py                                  # both settings, both halves
    python bench/vs_optuna.py --setting smoke --only optuna    # the plain half alone, no Ray
    python bench/vs_optuna.py --setting cpu --num-samples 2    # the real data, 2 trials
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pneumo_ray.config.data import DataSpec  # noqa: E402
from pneumo_ray.config.search import SEARCH  # noqa: E402
from pneumo_ray.config.sweep import PRESETS, SweepConfig  # noqa: E402

DATA = ROOT.parent / "shared" / "data"  # the real data beside the repository, as the tests read it


@dataclass(frozen=True)
class Setting:
    preset: str
    models: tuple[str, ...]
    num_samples: int
    real_data: bool
    target: float  # the bound on wall(pneumo-ray) / wall(plain Optuna)


SETTINGS = {
    "smoke": Setting("smoke", ("cnn",), 4, real_data=False, target=2.0),
    "cpu": Setting("cpu", ("cnn",), 4, real_data=True, target=1.1),
}


@dataclass
class Side:
    """One side's figures for one setting (all models of it together)."""

    wall_s: float = 0.0
    finetune_epochs_s: float = 0.0  # summed over every fine-tuning epoch of every trial
    pretrain_epochs_s: float = 0.0  # summed over the pre-training epochs (one run per key)
    pretrainings: int = 0
    trials: int = 0
    stopped_early: int = 0
    best_val_auc: float = math.nan
    test_auc_of_best: float = math.nan  # test AUC of the trial with the best validation AUC
    concurrency: int = 1
    torch_threads: int = 1
    extra: dict = field(default_factory=dict)

    def take_best(self, val_auc: float, test_auc: float) -> None:
        if not math.isnan(val_auc) and (math.isnan(self.best_val_auc) or val_auc > self.best_val_auc):
            self.best_val_auc, self.test_auc_of_best = val_auc, test_auc


def trial_threads(sweep: SweepConfig) -> int:
    """The torch threads of a pneumo-ray trial's worker: Ray sets OMP_NUM_THREADS to its whole CPUs."""
    return max(1, int(sweep.cpus_per_trial / sweep.workers_per_trial))


# --- the search space, as Optuna's define-by-run calls ----------------------------------------------


def suggest(trial, sweep: SweepConfig) -> dict:
    """The searched values of one trial, one suggest call per row of config/search.py in the table's
    order (the order pneumo-ray's Tune search space hands to Optuna)."""
    values = {}
    for s in SEARCH:
        rng = getattr(sweep, s.range_field)
        if not rng:  # an ingredient's row, not searched: not in Tune's space either
            continue
        if s.categorical:
            values[s.field] = trial.suggest_categorical(s.field, list(rng))
        else:
            values[s.field] = trial.suggest_float(s.field, rng[0], rng[1], log=s.log)
    return values


def describe_space(sweep: SweepConfig) -> str:
    parts = []
    for s in SEARCH:
        rng = getattr(sweep, s.range_field)
        if not rng:
            continue
        if s.categorical:
            parts.append(f"{s.field} in {{{', '.join(f'{v:g}' for v in rng)}}}")
        else:
            parts.append(f"{s.field} {'log-' if s.log else ''}uniform [{rng[0]:g}, {rng[1]:g}]")
    return "; ".join(parts)


# --- the decoded-image cache --------------------------------------------------------------------------


def warm_cache(spec: DataSpec) -> float:
    """Decode (or check) every image the setting reads into the shared cache, and build this process's
    augmentation kernel; returns the seconds it took. Neither timed side decodes afterwards; each Ray
    worker process builds its own private copy of the kernel (~0.2 s of CPU), as in real use."""
    from pneumo_ray.data.study_data import load_study_data
    from pneumo_ray.train import fastwarp

    t0 = time.time()
    load_study_data(spec, quiet=True, log=None)
    fastwarp.kernel()  # this process's private build (fastwarp never loads a library it did not just build)
    return time.time() - t0


def linked_cache(shared: Path, into: Path) -> Path:
    """A cache folder whose decoded entries are links to the shared cache's and whose pre-training
    store (pretrain/) is empty: a side reads the warm images but pre-trains for itself."""
    into.mkdir(parents=True)
    for f in shared.iterdir():
        if f.is_file() and f.suffix in (".u8", ".json"):
            (into / f.name).symlink_to(f.resolve())
    return into


# --- plain Optuna ------------------------------------------------------------------------------------


def plain_study(model: str, sweep: SweepConfig, study_data, device, side: Side) -> None:
    """One model's search as a single-process Optuna study over the project's core functions."""
    import optuna

    from pneumo_ray.train.conditions import training_conditions
    from pneumo_ray.train.protocol import final_evaluation, finetune, pretrain, pretrain_key

    base = sweep.base_config(model)
    source_hash = study_data.info.get("source_manifest_hash") if base.pretrain_epochs > 0 else None
    pretrained: dict[str, dict] = {}  # pre-training key → weights: one run per key, as pneumo-ray's store
    fits: dict[int, tuple] = {}  # trial number → (TrainConfig, FitResult up to where it stopped)

    def objective(trial: optuna.Trial) -> float:
        cfg = base.replace(**suggest(trial, sweep))
        init = None
        if source_hash and study_data.source is not None:
            key = pretrain_key(cfg, source_hash, training_conditions(device))
            if key not in pretrained:
                pretrained[key], meta = pretrain(cfg, study_data, device, log=None)
                side.pretrain_epochs_s += sum(h["epoch_seconds"] for h in meta["history"])
                side.pretrainings += 1
            init = pretrained[key]
        seen = {}

        def on_epoch(rec: dict, _model, result) -> None:
            seen["result"] = result
            trial.report(rec["best_val_auc"], rec["epoch"])  # what ASHA compares in pneumo-ray
            # ASHA has no rung at max_t (stopping after the last epoch saves nothing): nor does this
            if rec["epoch"] < sweep.epochs and trial.should_prune():
                raise optuna.TrialPruned()

        try:
            _, result = finetune(cfg, study_data, device, init_state=init, on_epoch=on_epoch, log=None)
        except optuna.TrialPruned:
            fits[trial.number] = (cfg, seen["result"])
            raise
        fits[trial.number] = (cfg, result)
        return result.best_val_auc

    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=sweep.seed),
        pruner=optuna.pruners.SuccessiveHalvingPruner(
            min_resource=sweep.grace_period, reduction_factor=sweep.reduction_factor
        ),
        study_name=f"plain-{model}",
    )
    study.optimize(objective, n_trials=sweep.num_samples)
    # the test set once per trial, after the search, on its best-validation weights (pneumo-ray's evaluate_trials)
    for t in study.trials:
        if t.number not in fits:
            continue
        cfg, result = fits[t.number]
        metrics, _ = final_evaluation(cfg, study_data, result, device)
        epochs = len(result.history)
        pruned = t.state == optuna.trial.TrialState.PRUNED
        side.trials += 1
        side.stopped_early += pruned
        side.finetune_epochs_s += sum(h["epoch_seconds"] for h in result.history)
        side.take_best(result.best_val_auc, metrics["test_auc"])
        shown = ", ".join(f"{k} {v:.3g}" for k, v in t.params.items())
        print(
            f"    trial {t.number}: {shown} -> best val AUC {result.best_val_auc:.4f}, test AUC "
            f"{metrics['test_auc']:.4f} ({epochs} epoch(s), {'stopped by the pruner' if pruned else 'completed'})"
        )


def run_plain(sweep: SweepConfig, data: DataSpec) -> Side:
    """The plain-Optuna half: data from the warm cache, one study per model, test evaluation; timed whole."""
    import torch

    from pneumo_ray.data.study_data import load_study_data
    from pneumo_ray.train.loop import pick_device

    side = Side(torch_threads=trial_threads(sweep))
    threads = torch.get_num_threads()
    torch.set_num_threads(side.torch_threads)
    device = pick_device("cuda" if sweep.gpus_per_trial else "cpu")
    try:
        t0 = time.time()
        study_data = load_study_data(data, quiet=True, log=None)
        for model in sweep.models:
            print(f"  plain Optuna, {model}:")
            plain_study(model, sweep, study_data, device, side)
        side.wall_s = time.time() - t0
    finally:
        torch.set_num_threads(threads)
    return side


# --- pneumo-ray ----------------------------------------------------------------------------------------


def run_ray(sweep: SweepConfig, data: DataSpec, work: Path, preset: str) -> Side:
    """The pneumo-ray half: `run_sweep` as `python -m study.sweep` calls it (Ray start and stop,
    the search, the test evaluation, the Parquet tables), timed whole; figures from its tables."""
    from pneumo_ray.config.output import OutputSpec
    from pneumo_ray.distributed.sweep import run_sweep
    from pneumo_ray.storage.results import read_results
    from pneumo_ray.train import checkpoints

    out = OutputSpec(name="pneumo-ray", results=str(work), preset=preset)
    t0 = time.time()
    rc = run_sweep(sweep, data, out)
    side = Side(wall_s=time.time() - t0, torch_threads=trial_threads(sweep))
    if rc != 0:
        raise RuntimeError(f"run_sweep exited with {rc}")
    res = read_results(out.folder)
    t = res.trials
    side.trials = len(t)
    side.stopped_early = int((t["stop_reason"] == "early_stopped").sum())
    side.finetune_epochs_s = float(res.epochs["epoch_seconds"].sum()) if "epoch_seconds" in res.epochs else math.nan
    for _, row in t.iterrows():
        side.take_best(_number(row.get("best_val_auc")), _number(row.get("test_auc")))
    for path in (Path(data.cache_dir) / "pretrain").glob("*.safetensors"):
        _, meta = checkpoints.load_weights(path)
        side.pretrainings += 1
        side.pretrain_epochs_s += sum(h["epoch_seconds"] for h in meta.get("history", []))
    side.concurrency = int(res.run.get("cluster", {}).get("concurrency", 0)) or side.concurrency
    threads = reported_threads(Path(out.ray_storage))
    if len(threads) == 1:
        side.torch_threads = threads.pop()
    elif threads:
        print(f"  note: pneumo-ray's trials reported different torch thread counts: {sorted(threads)}")
    side.extra["tune_s_per_model"] = tune_s = res.run.get("sessions", [{}])[-1].get("seconds_per_model")
    print(f"  pneumo-ray: {side.wall_s:.1f} s in all, of which the Tune experiment(s) {tune_s} s")
    return side


def reported_threads(storage: Path) -> set[int]:
    """The torch thread counts the fine-tuning workers reported (Tune's result.json of each trial)."""
    found = set()
    for path in storage.glob("**/result.json"):
        for line in path.read_text().splitlines():
            try:
                value = json.loads(line).get("torch_threads")
            except (json.JSONDecodeError, AttributeError):
                continue
            if isinstance(value, int):
                found.add(value)
    return found


def _number(value: object) -> float:
    return math.nan if value is None else float(value)


# --- one setting ---------------------------------------------------------------------------------------


def sweep_for(setting: Setting, args: argparse.Namespace) -> SweepConfig:
    """The preset's SweepConfig with the bench's models, trials and (given) lengths and CPUs."""
    values = {**PRESETS[setting.preset], "models": setting.models, "num_samples": setting.num_samples}
    for flag in ("models", "num_samples", "epochs", "pretrain_epochs", "image_size", "cpus_per_trial"):
        if getattr(args, flag) is not None:
            values[flag] = getattr(args, flag)
    # as the study CLI: a grace period longer than --epochs becomes --epochs
    values["grace_period"] = min(values.get("grace_period", 1), max(values.get("epochs", 1), 1))
    return SweepConfig(**values)


def data_for(setting: Setting, args: argparse.Namespace, sweep: SweepConfig, cache_dir: Path) -> DataSpec | None:
    """The setting's DataSpec (None: the real data are absent, the setting is skipped)."""
    if not setting.real_data:
        return sweep.data_spec(DataSpec(cache_dir=str(cache_dir)))
    missing = [p for p in (args.data_root, args.pretrain_root) if not Path(p).is_dir()]
    if missing:
        print(
            f"skipped: setting {setting.preset} needs the real data, and {', '.join(map(str, missing))} "
            "is not there (give --data-root and --pretrain-root)"
        )
        return None
    return sweep.data_spec(
        DataSpec(data_root=args.data_root, pretrain_root=args.pretrain_root, cache_dir=str(cache_dir))
    )


def run_setting(name: str, args: argparse.Namespace, shared: Path) -> dict | None:
    setting = SETTINGS[name]
    sweep = sweep_for(setting, args)
    data = data_for(setting, args, sweep, shared)
    if data is None:
        return None
    where = "synthetic phantoms" if data.data_root is None else f"{data.data_root} + {data.pretrain_root}"
    import torch

    from pneumo_ray.distributed.trials import max_concurrent_trials

    cpus = os.cpu_count() or 1
    here = {"CPU": cpus, "GPU": torch.cuda.device_count()}  # what a local Ray on this machine would offer
    at_once = max_concurrent_trials(here, sweep.cpus_per_trial, sweep.gpus_per_trial, sweep.max_concurrent)
    print(
        f"\n=== setting {name}: preset {setting.preset}, {where}\n"
        f"  {','.join(sweep.models)}: {sweep.num_samples} trial(s) each, {sweep.pretrain_epochs} pre-training + "
        f"{sweep.epochs} fine-tuning epochs at {sweep.image_size}px, batch {sweep.batch_size}, seed {sweep.seed}\n"
        f"  search: Optuna TPESampler(seed={sweep.seed}) over {describe_space(sweep)}\n"
        f"  early stopping: pneumo-ray ASHA(grace_period={sweep.grace_period}, reduction_factor="
        f"{sweep.reduction_factor}, max_t={sweep.epochs}) | plain SuccessiveHalvingPruner(min_resource="
        f"{sweep.grace_period}, reduction_factor={sweep.reduction_factor}), both on the best validation AUC so far\n"
        f"  threads: every trial trains with {trial_threads(sweep)} torch thread(s) ({sweep.cpus_per_trial:g} CPU per "
        f"trial); pneumo-ray runs up to {at_once} trial(s) at once on this machine's {cpus} CPUs, the plain study "
        "one after another"
    )
    seconds = warm_cache(data)
    print(f"  decoded-image cache {shared} warmed before timing either side ({seconds:.1f} s): neither side decodes")
    sides: dict[str, Side] = {}
    with tempfile.TemporaryDirectory(prefix="vs_optuna-") as tmp:
        if args.only in ("optuna", "both"):
            plain_data = data.replace(cache_dir=str(linked_cache(shared, Path(tmp) / "plain-cache")))
            sides["plain Optuna"] = run_plain(sweep, plain_data)
        if args.only in ("ray", "both"):
            ray_data = data.replace(cache_dir=str(linked_cache(shared, Path(tmp) / "ray-cache")))
            sides["pneumo-ray"] = run_ray(sweep, ray_data, Path(tmp) / "results", setting.preset)
    print_table(name, setting, sides)
    ratio = sides["pneumo-ray"].wall_s / sides["plain Optuna"].wall_s if len(sides) == 2 else None
    return dict(
        setting=name,
        sweep=asdict(sweep),
        target=setting.target,
        ratio=ratio,
        sides={k: asdict(v) for k, v in sides.items()},
    )


COLUMNS = (  # (header, the figure of a Side as text)
    ("wall s", lambda s: f"{s.wall_s:.1f}"),
    ("fine-tune epochs s", lambda s: f"{s.finetune_epochs_s:.1f}"),
    ("pre-train epochs s (runs)", lambda s: f"{s.pretrain_epochs_s:.1f} ({s.pretrainings})"),
    ("trials (stopped)", lambda s: f"{s.trials} ({s.stopped_early})"),
    ("best val AUC", lambda s: f"{s.best_val_auc:.4f}"),
    ("its test AUC", lambda s: f"{s.test_auc_of_best:.4f}"),
    ("at once", lambda s: str(s.concurrency)),
    ("threads", lambda s: str(s.torch_threads)),
)


def print_table(name: str, setting: Setting, sides: dict[str, Side]) -> None:
    print(f"\n  {'setting ' + name:>14}  " + "  ".join(h for h, _ in COLUMNS))
    for label, s in sides.items():
        print(f"  {label:>14}  " + "  ".join(f"{show(s):>{len(h)}}" for h, show in COLUMNS))
    if len(sides) == 2:
        r = sides["pneumo-ray"].wall_s / sides["plain Optuna"].wall_s
        verdict = "met" if r <= setting.target else "NOT met"
        print(f"  wall(pneumo-ray) / wall(plain Optuna) = {r:.2f}   target <= {setting.target:g}x: {verdict}")
    else:
        print(f"  wall ratio: needs both halves (--only both); target <= {setting.target:g}x")


# --- command line -------------------------------------------------------------------------------------


@contextmanager
def cache_env(shared: Path):
    """$PNEUMO_RAY_CACHE = the shared cache while the bench runs: where the augmentation kernel is
    built and found, by this process and (through Ray's runtime env) by every Ray worker."""
    before = os.environ.get("PNEUMO_RAY_CACHE")
    os.environ["PNEUMO_RAY_CACHE"] = str(shared)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PNEUMO_RAY_CACHE", None)
        else:
            os.environ["PNEUMO_RAY_CACHE"] = before


def _models(text: str) -> tuple[str, ...]:
    return tuple(m.strip() for m in text.split(",") if m.strip())


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python bench/vs_optuna.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--setting", choices=[*SETTINGS, "all"], default="all", help="which setting(s) to run (default: all)"
    )
    p.add_argument(
        "--only",
        choices=["optuna", "ray", "both"],
        default="both",
        help="run one half: optuna = the plain study (no Ray), ray = pneumo-ray (default: both, and their ratio)",
    )
    p.add_argument("--num-samples", type=int, help="trials per model (default: 4 in either setting)")
    p.add_argument("--models", type=_models, help="comma-separated: cnn,densenet (default: cnn)")
    p.add_argument("--epochs", type=int, help="fine-tuning epochs (default: the preset's; smoke 2, cpu 6)")
    p.add_argument("--pretrain-epochs", type=int, help="pre-training epochs (default: the preset's; smoke 1, cpu 2)")
    p.add_argument("--image-size", type=int, help="pixels per side (default: the preset's; smoke 32, cpu 64)")
    p.add_argument("--cpus-per-trial", type=float, help="CPUs (= torch threads) per trial (default: the preset's, 1)")
    p.add_argument(
        "--cache-dir", help="the shared decoded-image cache (default: $PNEUMO_RAY_CACHE, else ~/.cache/pneumo_ray)"
    )
    p.add_argument("--data-root", default=str(DATA / "chest_xray"), help="Kaggle chest_xray/ folder (cpu setting)")
    p.add_argument("--pretrain-root", default=str(DATA / "coronahack"), help="Kaggle CoronaHack folder (cpu setting)")
    p.add_argument("--json", help="also write the figures to this file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    import optuna

    from pneumo_ray.data.cache import default_cache_dir

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per trial from us, not Optuna's
    shared = Path(args.cache_dir or default_cache_dir()).expanduser().resolve()
    shared.mkdir(parents=True, exist_ok=True)
    names = list(SETTINGS) if args.setting == "all" else [args.setting]
    with cache_env(shared):
        figures = [f for f in (run_setting(n, args, shared) for n in names) if f is not None]
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
