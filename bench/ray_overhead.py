"""Ray overhead benchmark: the same fine-tuning epochs (model, data, size, threads) through the bare
core loop and through the full Tune → Ray Train path, one run, after warm-up.

Prints the epoch time of each (median over epochs 2..E, so the first epoch's warm-up is not counted),
their ratio, and the fixed per-trial start-up cost (from `Tuner.fit()` to the first epoch's start).
The Ray path's epoch time is the interval between consecutive reports seen by Tune's worker, so it
includes `ray.train.report`, the best-checkpoint write and the controller's polling.

    python bench/ray_overhead.py [--model cnn] [--image-size 64] [--epochs 4] [--cpus 2]
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["cnn", "densenet"], default="cnn")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--cpus", type=float, default=float(os.cpu_count() or 1), help="threads / trial CPUs")
    args = p.parse_args(argv)
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
