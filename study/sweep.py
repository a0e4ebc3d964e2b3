"""python -m study.sweep — Ray Tune + Optuna search over pretrain → finetune Ray Train jobs.

Every trial: a shared, content-addressed pre-training (one Ray Train job per distinct key) and a
fine-tuning Ray Train job; Optuna (TPE) proposes augmentation strength, class weight and learning
rates to maximise validation AUC; ASHA stops poor trials early. Results: <results>/<name>/
trials.parquet, epochs.parquet, predictions.parquet, val_predictions.parquet, run.json, and the
validation-chosen ensemble per model (ensemble.parquet, ensemble_predictions.parquet; --ensemble K)
(schema in results/README.md).
The fine-tuning ingredients (--ema, --mixup, --label-smoothing, --photometric, --tta) are off unless
given, then the same for every trial; --ema-range, --mixup-range, ... search one instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

from pneumo_ray.config.data import DataSpec
from pneumo_ray.config.errors import UserError, flag_of
from pneumo_ray.config.output import OutputSpec
from pneumo_ray.config.sweep import PRESETS, SweepConfig
from pneumo_ray.storage.lock import check_free
from study import common

# the sweep's own flags besides those study.ablate shares (study/common.py)
SWEEP_ONLY = (
    common.Flag("--num-samples", "num_samples", "trials per model", int),
    common.Flag("--seed", "seed", "split, initialisation and Optuna seed", int),
    common.Flag(
        "--ensemble",
        "ensemble",
        "after the search, per model: an ensemble of at most K picks of the trials' best checkpoints, chosen "
        "on validation only (the best trial by validation AUC, then greedy additions while the validation "
        "log-loss falls), then applied once to test "
        "(default 5; 0 = none; python -m study.ensemble rebuilds it)",
        int,
        metavar="K",
    ),
)


def _preset_table() -> str:
    fields = [f.name for f in dataclasses.fields(SweepConfig)]
    lines = ["presets (every value can be overridden by its flag):"]
    for name, values in PRESETS.items():
        cfg = dataclasses.replace(SweepConfig(), **values)
        shown = ", ".join(f"{k}={getattr(cfg, k)}" for k in fields if k not in ("max_concurrent", "max_failures"))
        lines.append(f"  {name}: {shown}")
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    p = common.ArgumentParser(
        prog="python -m study.sweep",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_preset_table() + "\n\nexamples:\n"
        "  python -m study.sweep                               # smoke preset, synthetic data, both models\n"
        "  python -m study.sweep --preset cpu --data-root ~/data/chest_xray --pretrain-root ~/data/coronahack\n"
        "  python -m study.sweep --preset paper --address auto --storage /mnt/efs/pneumo \\\n"
        "      --data-root /mnt/efs/chest_xray ...\n"
        "  python -m study.sweep --name my-sweep --resume     # finish an interrupted sweep",
    )
    common.add_sweep_flags(p, preset_help="starting values (default: smoke)", extra=SWEEP_ONLY)
    common.add_ingredient_flags(
        p.add_argument_group("fine-tuning ingredients (off unless given; --ema-range etc. search one instead)"),
        "every trial",
    )
    d = common.add_data_args(p)
    d.add_argument("--no-pretrain", action="store_true", help="no pre-training: fine-tune from random initialisation")
    d.add_argument(
        "--allow-test-overlap",
        action="store_true",
        help="pre-train on all source images, even those sharing a file name, patient or content with the "
        "target's validation/test sets (the seed's leaky protocol)",
    )
    common.add_output_args(p, "sweep name (default: sweep-YYYYmmdd-HHMMSS)", "continue the interrupted sweep --name")
    common.add_debug_flag(p)
    return p


FLAGS = [*common.LENGTHS, *SWEEP_ONLY, *common.SEARCH_FLAGS, *common.RESOURCES]


def ignored_on_resume(args: argparse.Namespace, argv: list[str]) -> list[str]:
    """The flags given with --resume that would change nothing: a sweep resumes with its recorded settings."""
    given = [f.flag for f in FLAGS if getattr(args, f.dest) is not None]
    given += [
        f
        for f in ("--data-root", "--pretrain-root", "--cache-dir", "--storage")
        if getattr(args, f[2:].replace("-", "_"))
    ]
    given += [f for f in ("--no-pretrain", "--allow-test-overlap") if getattr(args, f[2:].replace("-", "_"))]
    given += [flag_of(field) for field in common.ingredient_values(args)]
    return given + [a.split("=")[0] for a in argv if a == "--preset" or a.startswith("--preset=")]


def resumed(args: argparse.Namespace, argv: list[str], out: OutputSpec) -> tuple[SweepConfig, DataSpec, OutputSpec]:
    """The settings recorded in <results>/<name>/run.json; UserError if there is none or it is damaged."""
    ignored = ignored_on_resume(args, argv)
    if ignored:
        raise UserError(
            f"--resume continues {out.folder} with its recorded settings, so {', '.join(ignored)} would be "
            "ignored: drop them, or start a new sweep under another --name"
        )
    run = common.read_run_json(out.folder, "--resume")
    if run is None:
        raise UserError(f"--resume: {out.folder / 'run.json'} not found (which --name was interrupted?)")
    from pneumo_ray.distributed.sweep import specs_from_run

    return specs_from_run(run, out)  # a damaged run.json: UserError naming it


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = get_args_parser()
    args = parser.parse_args(common.attach_negative_values(argv, parser))
    if args.resume and args.name is None:
        raise UserError("--resume needs the --name of the interrupted sweep (a folder under --results)")
    out = common.output_spec(args, name=time.strftime("sweep-%Y%m%d-%H%M%S") if args.name is None else args.name)
    check_free(out.folder)  # a sweep or ablation running there: refused, naming it, before any other check
    if args.resume:
        sweep, data, out = resumed(args, argv, out)
        print(f"resuming sweep {out.name} with its recorded settings")
    else:
        if (out.folder / "trials.parquet").exists():
            raise UserError(
                f"{out.folder} already holds a sweep; pass --resume to continue it or choose another --name"
            )
        if args.no_pretrain and args.pretrain_epochs:
            raise UserError(
                f"--no-pretrain and --pretrain-epochs {args.pretrain_epochs} contradict each other: give one"
            )
        fixed = {"pretrain_epochs": 0} if args.no_pretrain else {}
        fixed.update(common.ingredient_values(args))
        sweep = common.sweep_config(args.preset, args, FLAGS, **fixed)
        data = sweep.data_spec(common.data_spec(args, allow_overlap=args.allow_test_overlap))
    common.check_address(out.address)
    common.check_local_gpus(sweep, out, typed=args.gpus_per_trial is not None)
    from pneumo_ray.distributed.sweep import run_sweep

    return run_sweep(sweep, data, out)


if __name__ == "__main__":
    sys.exit(common.run_main(main))
