"""Ray overhead benchmark: the same fine-tuning epochs (model, data, size, threads) through the bare
core loop and through the full Tune → Ray Train path, one run, after warm-up.

Prints the epoch time of each (median over epochs 2..E, so the first epoch's warm-up is not counted),
their ratio, and the fixed per-trial start-up cost (from `Tuner.fit()` to the first epoch's start).
The Ray path's epoch time is the interval between consecutive reports seen by Tune's worker, so it
includes `ray.train.report`, the best-checkpoint write and the controller's polling.

First, where a trial's wall time goes (`--trials 4`: the 4-trial CNN smoke search of `study.sweep
--preset smoke --models cnn --num-samples 4`): per trial the start of its process as the driver sees
it (Tune start → trial function: a new process and its imports, or nothing when Tune reuses the
previous trial's), the Train start → worker function (a worker group's start; nothing for a one-worker
job, which runs in the trial's process), worker context, data open, pre-training (lock wait and
total), model set-up, reports and checkpoints, and the fixed cost = trial wall − its epochs (Tune's
trial time, the issue's measure) and with the process start included; the controllers' own timing of
each worker-group start phase, if any; and the once-per-sweep Ray start, test evaluation and result
collection.

    python bench/ray_overhead.py [--trials 4] [--no-epochs] [--model cnn] [--image-size 64] [--epochs 4] [--cpus 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def synthetic(args, cache_dir):
    """The synthetic target at the benchmark's image size, no pre-training source."""
    from pneumo_ray.config.data import DataSpec

    return DataSpec(image_size=args.image_size, split_seed=0, use_pretrain=False, cache_dir=cache_dir)


def bare(args, cache_dir) -> list[float]:
    import torch

    from pneumo_ray.config.train import TrainConfig
    from pneumo_ray.data.study_data import load_study_data
    from pneumo_ray.train.protocol import finetune

    torch.set_num_threads(int(args.cpus))
    data = load_study_data(synthetic(args, cache_dir), quiet=True, log=None)
    cfg = TrainConfig(model=args.model, image_size=args.image_size, epochs=args.epochs, pretrain_epochs=0)
    _, result = finetune(cfg, data, torch.device("cpu"), log=None)
    return [h["epoch_seconds"] for h in result.history]


def through_ray(args, cache_dir, storage) -> tuple[list[float], list[float], float, int]:
    from pneumo_ray.config.sweep import SweepConfig
    from pneumo_ray.data.study_data import load_study_data
    from pneumo_ray.distributed.sweep import init_ray
    from pneumo_ray.distributed.trials import run_model_sweep

    sweep = SweepConfig(
        models=(args.model,),
        num_samples=1,
        image_size=args.image_size,
        epochs=args.epochs,
        pretrain_epochs=0,
        cpus_per_trial=args.cpus,
        grace_period=args.epochs,
        aug_range=(0.5, 0.5),
        class_weight_scale_range=(1.0, 1.0),
        lr_range=(1e-3, 1e-3),
    )
    spec = synthetic(args, cache_dir)
    data = load_study_data(spec, quiet=True, log=None)
    ray = init_ray(None)
    try:
        t0 = time.time()
        ms = run_model_sweep(
            args.model,
            sweep,
            source_hash=data.info.get("source_manifest_hash"),
            data=spec,
            storage=storage,
            store=Path(cache_dir) / "pretrain",
            exp_name=f"overhead-{args.model}",
            resume=False,
            concurrency=1,
        )
    finally:
        ray.shutdown()
    df = next(iter(ms.results)).metrics_dataframe.sort_values("epoch")
    stamps = df["reported_at"].tolist()
    cycles = [b - a for a, b in zip(stamps, stamps[1:])]
    startup = stamps[0] - df["epoch_seconds"].iloc[0] - t0
    return cycles, df["epoch_seconds"].tolist(), startup, int(df["torch_threads"].iloc[0])


def _controller_phases(session_logs: Path) -> dict[str, list[float]]:
    """Seconds of each worker-group start phase, from the Ray Train controllers' own log lines."""
    import json
    import re

    phases = {
        "worker actors created": r"(\d+) worker actors created in ([\d.]+)s",
        "train context initialised": r"Train context initialized on workers in ([\d.]+)s",
        "train function launched": r"Train function launched on workers in ([\d.]+)s",
        "worker group start (total)": r"Worker group startup completed in ([\d.]+)s total",
    }
    out: dict[str, list[float]] = {k: [] for k in phases}
    for f in session_logs.glob("train/ray-train-sys-controller-*.log"):
        for line in f.read_text(errors="replace").splitlines():
            try:
                msg = json.loads(line).get("message", "")
            except ValueError:
                continue
            for name, pat in phases.items():
                m = re.search(pat, msg)
                if m:
                    out[name].append(float(m.groups()[-1]))
    return out


def _span_recorder():
    """A Tune callback noting, on the driver's side, when each trial was started and when it ended: the
    trial's whole span, including the start of its process (which Tune's own trial time leaves out)."""
    from ray.tune import Callback

    class Spans(Callback):
        def __init__(self):
            self.start: dict[str, float] = {}
            self.end: dict[str, float] = {}

        def on_trial_start(self, iteration, trials, trial, **info):
            self.start.setdefault(trial.trial_id, time.time())

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.end[trial.trial_id] = time.time()

    return Spans()


def trial_breakdown(args, cache_dir, storage) -> None:
    """A 4-trial CNN smoke search through Tune → Ray Train, as `study.sweep --preset smoke --models cnn
    --num-samples 4` runs it: per trial, where the wall time goes; then the median fixed cost."""
    import pandas as pd

    from pneumo_ray.config.data import DataSpec
    from pneumo_ray.config.sweep import PRESETS, SweepConfig
    from pneumo_ray.data.study_data import load_study_data
    from pneumo_ray.distributed.sweep import init_ray
    from pneumo_ray.distributed.trials import evaluate_trials, run_model_sweep, trial_rows

    sweep = SweepConfig(**{**PRESETS["smoke"], "models": ("cnn",), "num_samples": args.trials})
    spec = sweep.data_spec(DataSpec(cache_dir=cache_dir))
    data = load_study_data(spec, quiet=True, log=None)
    t0 = time.time()
    ray = init_ray(None, Path(storage) / "logs")
    session_logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    t_ray = time.time() - t0
    try:
        concurrency = int(ray.cluster_resources().get("CPU", 1) // sweep.cpus_per_trial)
        t1 = time.time()
        spans = _span_recorder()
        ms = run_model_sweep(
            "cnn",
            sweep,
            source_hash=data.info.get("source_manifest_hash"),
            data=spec,
            storage=storage,
            store=Path(cache_dir) / "pretrain",
            exp_name="breakdown-cnn",
            resume=False,
            concurrency=concurrency,
            callbacks=[spans],
        )
        t_search = time.time() - t1
        t2 = time.time()
        evaluated = evaluate_trials(ms, sweep, spec, storage)
        t_test = time.time() - t2
        t3 = time.time()
        trials, epochs, _ = trial_rows(ms, sweep, "smoke", data.info.get("source_manifest_hash"), evaluated)
        t_collect = time.time() - t3
        phases = _controller_phases(session_logs)
    finally:
        ray.shutdown()
    t = pd.DataFrame(trials).set_index("trial_id")
    e = pd.concat(epochs).sort_values("epoch")
    first, last = e.groupby("trial_id").first(), e.groupby("trial_id").last()
    fit_start = first.reported_at - first.epoch_seconds  # when the first fine-tuning epoch began
    ready = t.worker_started_at + t.worker_context_s + t.data_open_s
    span = pd.Series(spans.end) - pd.Series(spans.start)
    b = pd.DataFrame(
        {
            "trial wall": t.wall_s,
            "epochs": t.epochs_s,
            "Tune start→trial fn": t.trial_started_at
            - pd.Series(spans.start),  # Tune marks a trial started once its process is up
            "Tune start→end": span,
            "Train start→worker fn": t.worker_started_at - t.trainer_started_at,
            "worker context": t.worker_context_s,
            "data open": t.data_open_s,
            "pre-training (lock wait)": t.pretrain_wait_s,
            "pre-training (total)": t.pretrain_s,
            "model/optimizer set-up": fit_start - ready - t.pretrain_s,
            "reports+checkpoints": (last.reported_at - fit_start) - t.epochs_s,
        }
    )
    b["fixed = wall − epochs"] = b["trial wall"] - b["epochs"]
    b["fixed incl. process start"] = b["Tune start→end"] - b["epochs"]
    print(f"\nper trial ({args.trials} CNN smoke trials, {concurrency} at a time), seconds:")
    print(b.round(2).T.to_string())
    if any(phases.values()):
        print("\nRay Train worker-group start, from the controllers' logs (median over jobs, s):")
        for name, vals in phases.items():
            if vals:
                print(f"  {name}: {statistics.median(vals):.2f}  (n={len(vals)})")
    else:
        print("\nno Ray Train worker group was started: every one-worker job ran in its trial's process")
    print(
        f"\nonce per sweep: Ray start {t_ray:.1f} s, search {t_search:.1f} s, test evaluation {t_test:.1f} s, "
        f"result collection {t_collect:.2f} s; Tuner.fit() → first trial function "
        f"{t.trial_started_at.min() - t1:.1f} s "
        "(Tune, Optuna and the first trial processes' start and imports)"
    )
    print(
        f"median per-trial fixed cost (trial wall − its epochs): {b['fixed = wall − epochs'].median():.1f} s; "
        f"with the trial's process start (Tune start→end − epochs): {b['fixed incl. process start'].median():.1f} s"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["cnn", "densenet"], default="cnn")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--cpus", type=float, default=float(os.cpu_count() or 1), help="threads / trial CPUs")
    p.add_argument("--trials", type=int, default=4, help="trials of the per-trial breakdown (0: skip it)")
    p.add_argument("--no-epochs", action="store_true", help="skip the bare-vs-Ray epoch comparison")
    args = p.parse_args(argv)
    if args.trials:
        with tempfile.TemporaryDirectory() as tmp:
            cache_dir = os.environ.get("PNEUMO_RAY_CACHE") or tmp
            trial_breakdown(args, cache_dir, str(Path(tmp) / "ray-trials"))
    if args.no_epochs:
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        cache_dir = os.environ.get("PNEUMO_RAY_CACHE") or tmp
        print(f"{args.model} at {args.image_size}px, synthetic data, {args.epochs} epochs, {args.cpus:g} CPU(s)")
        b = bare(args, cache_dir)
        print(f"  bare loop epochs (s): {[round(x, 2) for x in b]}")
        cycles, inner, startup, threads = through_ray(args, cache_dir, str(Path(tmp) / "ray"))
        # the bare loop again after Ray: this VM's speed drifts by ±10% over minutes, so the bare
        # reference is the mean of a run before and a run after the Ray path
        b2 = bare(args, cache_dir)
        print(f"  bare loop again (s): {[round(x, 2) for x in b2]}")
        print(
            f"  Tune→Train report-to-report (s): {[round(x, 2) for x in cycles]}; in-worker epoch (s): "
            f"{[round(x, 2) for x in inner]}; worker torch threads {threads}"
        )
    bare_epoch = (statistics.median(b[1:]) + statistics.median(b2[1:])) / 2
    ray_epoch = statistics.median(cycles[-(len(b) - 1) :]) if cycles else float("nan")
    inner_epoch = statistics.median(inner[1:])
    print(
        f"\nepoch time  bare {bare_epoch:.2f} s | Tune→Train {ray_epoch:.2f} s | ratio {ray_epoch / bare_epoch:.3f} "
        f"(in-worker compute alone: {inner_epoch / bare_epoch:.3f})"
    )
    print(f"per-trial start-up (Tuner.fit() → first epoch starts): {startup:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
