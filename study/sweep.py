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

from pneumo_ray.config.sweep import PRESETS, SweepConfig
from study import common

# the sweep's own flags besides those study.ablate shares (study/common.py)
SWEEP_ONLY = (
    common.Flag("--num-samples", "num_samples", "trials per model", int),
    common.Flag("--seed", "seed", "split, initialisation and Optuna seed", int),
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
    p = argparse.ArgumentParser(
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
    d = common.add_data_args(p)
    d.add_argument("--no-pretrain", action="store_true", help="no pre-training: fine-tune from random initialisation")
    d.add_argument(
        "--allow-test-overlap",
        action="store_true",
        help="pre-train on all source images, even those sharing a file name, patient or content with the "
        "target's validation/test sets (the seed's leaky protocol)",
    )
    common.add_output_args(p, "sweep name (default: sweep-YYYYmmdd-HHMMSS)", "continue the interrupted sweep --name")
    return p


FLAGS = [*common.LENGTHS, *SWEEP_ONLY, *common.SEARCH_FLAGS, *common.RESOURCES]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = get_args_parser().parse_args(common.attach_negative_values(argv, FLAGS))
    out = common.output_spec(args, name=args.name or time.strftime("sweep-%Y%m%d-%H%M%S"))
    run_json = out.folder / "run.json"
    if args.resume:
        if not run_json.exists():
            print(f"error: --resume: {run_json} not found (which --name was interrupted?)", file=sys.stderr)
            return 2
        from pneumo_ray.distributed.sweep import specs_from_run

        sweep, data, out = specs_from_run(json.loads(run_json.read_text()), out)
        print(f"resuming sweep {out.name} with its recorded settings")
    else:
        if (out.folder / "trials.parquet").exists():
            print(
                f"error: {out.folder} already holds a sweep; pass --resume to continue it or choose another --name",
                file=sys.stderr,
            )
            return 2
        try:
            fixed = {"pretrain_epochs": 0} if args.no_pretrain else {}
            sweep = common.sweep_config(args.preset, args, FLAGS, **fixed)
            data = sweep.data_spec(common.data_spec(args, allow_overlap=args.allow_test_overlap))
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    from pneumo_ray.distributed.sweep import run_sweep

    return run_sweep(sweep, data, out)


if __name__ == "__main__":
    sys.exit(main())
