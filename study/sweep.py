"""python -m study.sweep — Ray Tune + Optuna search over pretrain → finetune Ray Train jobs.

Every trial: a shared, content-addressed pre-training (one Ray Train job per distinct key) and a
fine-tuning Ray Train job; Optuna (TPE) proposes augmentation strength, class weight and learning
rates to maximise validation AUC; ASHA stops poor trials early. Results: <results>/<name>/
trials.parquet, epochs.parquet, predictions.parquet, run.json (schema in results/README.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from pneumo_ray.config.sweep import PRESETS, SweepConfig


OVERRIDES = [  # flag, SweepConfig field, type, help
    ("--models", "models", lambda s: tuple(m.strip() for m in s.split(",") if m.strip()), "comma-separated: cnn,densenet"),
    ("--num-samples", "num_samples", int, "trials per model"),
    ("--image-size", "image_size", int, "pixels per side"),
    ("--epochs", "epochs", int, "fine-tuning epochs (ASHA's max_t)"),
    ("--pretrain-epochs", "pretrain_epochs", int, "pre-training epochs (0 = none)"),
    ("--batch-size", "batch_size", int, "batch size per worker"),
    ("--seed", "seed", int, "split, initialisation and Optuna seed"),
    ("--pretrain-lrs", "pretrain_lrs", lambda s: tuple(float(x) for x in s.split(",")),
     "pre-training learning rates Optuna chooses among (categorical: trials share pre-trainings)"),
    ("--lr-range", "lr_range", lambda s: tuple(float(x) for x in s.split(",")), "fine-tuning lr range LOW,HIGH (log)"),
    ("--aug-range", "aug_range", lambda s: tuple(float(x) for x in s.split(",")), "augmentation strength range LOW,HIGH"),
    ("--class-weight-range", "class_weight_scale_range", lambda s: tuple(float(x) for x in s.split(",")),
     "range LOW,HIGH (log) of the multiplier on the inverse-frequency NORMAL class weight"),
    ("--grace-period", "grace_period", int, "ASHA: epochs before a trial can be stopped"),
    ("--workers-per-trial", "workers_per_trial", int, "Ray Train workers (DDP) per job"),
    ("--cpus-per-trial", "cpus_per_trial", float, "CPUs per trial (split over its workers)"),
    ("--gpus-per-trial", "gpus_per_trial", float, "GPUs per trial; fractions share a GPU (e.g. 0.25)"),
    ("--placement-strategy", "placement_strategy", str,
     "where a job's workers go: PACK (default), SPREAD, STRICT_SPREAD (one worker per node)"),
    ("--max-concurrent", "max_concurrent", int, "cap on concurrent trials (0 = what the resources allow)"),
]


def _preset_table() -> str:
    fields = [f.name for f in dataclasses.fields(SweepConfig)]
    lines = ["presets (every value can be overridden by its flag):"]
    for name, values in PRESETS.items():
        cfg = dataclasses.replace(SweepConfig(), **values)
        shown = ", ".join(f"{k}={getattr(cfg, k)}" for k in fields if k not in ("max_concurrent", "max_failures"))
        lines.append(f"  {name}: {shown}")
    return "\n".join(lines)


def add_data_args(p: argparse.ArgumentParser):
    """The data flags every study command shares; returns the group for more."""
    d = p.add_argument_group("data")
    d.add_argument("--data-root", help="Kaggle chest_xray/ folder (target); default: synthetic phantoms")
    d.add_argument("--pretrain-root", help="Kaggle CoronaHack folder (pre-training source)")
    d.add_argument("--cache-dir", help="decoded images + pre-trained weights (default $PNEUMO_RAY_CACHE or "
                                       "~/.cache/pneumo_ray; on a cluster: shared storage)")
    return d


def add_output_args(p: argparse.ArgumentParser, name_help: str, resume_help: str):
    o = p.add_argument_group("output and cluster")
    o.add_argument("--results", default="results", help="results folder")
    o.add_argument("--name", help=name_help)
    o.add_argument("--resume", action="store_true", help=resume_help)
    o.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else start a local Ray)")
    o.add_argument("--storage", help="Ray Tune/Train storage, a shared PATH or s3://… (default: <results>/<name>/ray)")
    return o


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m study.sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_preset_table() + "\n\nexamples:\n"
        "  python -m study.sweep                               # smoke preset, synthetic data, both models\n"
        "  python -m study.sweep --preset cpu --data-root ~/data/chest_xray --pretrain-root ~/data/coronahack\n"
        "  python -m study.sweep --preset paper --address auto --storage /mnt/efs/pneumo --data-root /mnt/efs/chest_xray ...\n"
        "  python -m study.sweep --name my-sweep --resume     # finish an interrupted sweep")
    p.add_argument("--preset", choices=sorted(PRESETS), default="smoke", help="starting values (default: smoke)")
    for flag, _, typ, help_ in OVERRIDES:
        p.add_argument(flag, type=typ, default=None, help=help_)
    d = add_data_args(p)
    d.add_argument("--no-pretrain", action="store_true", help="no pre-training: fine-tune from random initialisation")
    d.add_argument("--allow-test-overlap", action="store_true",
                   help="pre-train on all source images, even those sharing a file name, patient or content with the "
                        "target's validation/test sets (the seed's leaky protocol)")
    add_output_args(p, "sweep name (default: sweep-YYYYmmdd-HHMMSS)", "continue the interrupted sweep --name")
    return p


def sweep_config(args) -> SweepConfig:
    cfg = dataclasses.replace(SweepConfig(), **PRESETS[args.preset])
    over = {field: getattr(args, flag[2:].replace("-", "_")) for flag, field, _, _ in OVERRIDES}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in over.items() if v is not None})
    if args.no_pretrain:
        cfg = dataclasses.replace(cfg, pretrain_epochs=0)
    bad = [m for m in cfg.models if m not in ("cnn", "densenet")]
    if bad or not cfg.models:
        raise ValueError(f"--models must name cnn and/or densenet, got {','.join(cfg.models) or 'nothing'}")
    if cfg.placement_strategy not in ("PACK", "SPREAD", "STRICT_SPREAD", "STRICT_PACK"):
        raise ValueError(f"--placement-strategy must be PACK, SPREAD, STRICT_SPREAD or STRICT_PACK, "
                         f"got {cfg.placement_strategy}")
    if cfg.num_samples < 1 or cfg.epochs < 1:
        raise ValueError("--num-samples and --epochs must be at least 1")
    return cfg


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    name = args.name or time.strftime("sweep-%Y%m%d-%H%M%S")
    out = Path(args.results) / name
    run_json = out / "run.json"
    if args.resume:
        if not run_json.exists():
            print(f"error: --resume: {run_json} not found (which --name was interrupted?)", file=sys.stderr)
            return 2
        saved = json.loads(run_json.read_text())
        sweep = SweepConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved["sweep"].items()})
        for k in ("data_root", "pretrain_root", "allow_test_overlap", "cache_dir", "storage", "preset"):
            setattr(args, k, saved["args"].get(k))
        print(f"resuming sweep {name} with its recorded settings")
    else:
        if (out / "trials.parquet").exists():
            print(f"error: {out} already holds a sweep; pass --resume to continue it or choose another --name",
                  file=sys.stderr)
            return 2
        try:
            sweep = sweep_config(args)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    from pneumo_ray.distributed.sweep import run_sweep

    return run_sweep(sweep, args, name=name, out=out)


if __name__ == "__main__":
    sys.exit(main())
