"""python -m study.ablate — does pre-training on CoronaHack help? Multi-seed ablation arms.

An arm trains every selected model over --seeds K seeds (Ray Train jobs on a Ray Tune grid):
  (no flag)            transfer: pre-train on the source, fine-tune unfrozen on the target
  --no-pretrain        the same models from random initialisation
  --no-augment         no augmentation (pre-training and fine-tuning)
  --no-class-weights   unweighted fine-tuning loss
  --freeze-backbone    fine-tune only the classifier head
  --allow-test-overlap pre-train on all source images, as the seed study did (a separate, labelled arm)
Flags combine into one arm. Run arms under one --name, then compare: every arm is paired with the
transfer arm on the same test images and seeds. The verdict comes from a paired test that counts
both seed-to-seed variation and the sampling of the test images (calibrated by simulation:
bench/verdict_calibration.py), Holm-adjusted over the arms compared with transfer.

Configuration (the same protocol for every arm of one --name):
  --tune N             fair: each arm gets its own Optuna search of N trials (same space minus what
                       the arm fixes, same budget, same validation patients, validation AUC only),
                       then runs its seeds at its own best configuration
  --from SWEEP         the best trial (by validation AUC) of a finished sweep, for every arm: tuned
                       for the sweep's arm (with pre-training: transfer), so tilted toward it
  (neither)            the seed study's defaults, tuned for no arm
Training lengths and resources come from --preset and the flags.
Pre-training excludes every source image whose name, patient or content is in the target's
validation or test set (the leakage audit is written beside the results).

Results: <results>/<name>/ablations.parquet, ablation_predictions.parquet, ablation_summary.parquet,
audit_summary.parquet, run.json. Re-running an arm runs only seeds it lacks.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from study.sweep import OVERRIDES, PRESETS, add_data_args, add_output_args, sweep_config

FLAGS = ("--no-pretrain", "--no-augment", "--no-class-weights", "--freeze-backbone")
# the sweep's flags that make sense here (not the search ranges, not --seed: seeds are replicates)
KEPT = ("--models", "--image-size", "--epochs", "--pretrain-epochs", "--batch-size", "--workers-per-trial",
        "--cpus-per-trial", "--gpus-per-trial", "--placement-strategy", "--max-concurrent",
        # the search space and ASHA, used by --tune
        "--pretrain-lrs", "--lr-range", "--aug-range", "--class-weight-range", "--grace-period")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m study.ablate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  python -m study.ablate --preset smoke --seeds 2 --name demo\n"
        "  python -m study.ablate --preset smoke --seeds 2 --name demo --no-pretrain\n"
        "  python -m study.ablate --summarize results/demo\n"
        "  python -m study.ablate --preset cpu --models cnn --seeds 5 --tune 6 --name real --data-root ~/data/chest_xray \\\n"
        "      --pretrain-root ~/data/coronahack          # then the same with --no-pretrain: each arm tuned on its own\n"
        "  python -m study.ablate --preset cpu --models cnn --seeds 3 --data-root ~/data/chest_xray \\\n"
        "      --pretrain-root ~/data/coronahack --from results/my-sweep --name cnn-transfer")
    p.add_argument("--summarize", metavar="FOLDER", help="only print (and write) the statistics of an ablation folder")
    arms = p.add_argument_group("arm (no flag: transfer)")
    for flag in FLAGS:
        arms.add_argument(flag, action="store_true")
    arms.add_argument("--allow-test-overlap", action="store_true",
                      help="pre-train on all source images, also those sharing a name, patient or content with the "
                           "target's validation/test sets (the seed's protocol)")
    t = p.add_argument_group("training (see python -m study.sweep --help for the presets)")
    t.add_argument("--preset", choices=sorted(PRESETS), default="smoke", help="lengths and resources (default: smoke)")
    t.add_argument("--seeds", type=int, default=5, help="seeds 0..K-1 per model (default 5)")
    t.add_argument("--split-seed", type=int, default=None,
                   help="seed of the patient-grouped validation split, the same for every arm (default: the preset's)")
    t.add_argument("--tune", type=int, metavar="N", default=None,
                   help="tune each arm on its own: an Optuna search of N trials per model on validation AUC, then the "
                        "seeds at the arm's best configuration (the fair protocol; reused when the arm runs again)")
    t.add_argument("--from", dest="from_", metavar="SWEEP",
                   help="take each model's configuration from this sweep folder (tuned for the sweep's arm)")
    for flag, _, typ, help_ in OVERRIDES:
        if flag in KEPT:
            t.add_argument(flag, type=typ, default=None, help=help_)
    add_data_args(p)
    add_output_args(p, "ablation name: run every arm under the same one (default: ablate-<preset>)",
                    "complete this arm's interrupted run")
    return p


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.summarize:
        from pneumo_ray.distributed.ablation import print_summary

        if not Path(args.summarize).is_dir():
            print(f"error: --summarize {args.summarize}: no such folder", file=sys.stderr)
            return 2
        return print_summary(Path(args.summarize))
    from pneumo_ray.config.arms import Arm

    try:
        for flag, _, _, _ in OVERRIDES:  # the sweep flags this command does not take stay unset
            if flag not in KEPT:
                setattr(args, flag[2:].replace("-", "_"), None)
        sweep = sweep_config(argparse.Namespace(**{**vars(args), "no_pretrain": False}))
        if args.split_seed is not None:
            sweep = dataclasses.replace(sweep, seed=args.split_seed)
        if args.seeds < 1:
            raise ValueError("--seeds must be at least 1")
        arm = Arm(tuple(f[2:].replace("-", "_") for f in FLAGS if getattr(args, f[2:].replace("-", "_"))),
                  allow_overlap=args.allow_test_overlap)
        if args.tune is not None and args.from_:
            raise ValueError("--tune and --from are two ways to choose the configuration: give one")
        if args.tune is not None and args.tune < 1:
            raise ValueError(f"--tune {args.tune}: the search needs at least 1 trial")
        if args.from_ and not Path(args.from_).is_dir():
            raise ValueError(f"--from {args.from_}: no such folder")
        if arm.pretrains and sweep.pretrain_epochs == 0:
            raise ValueError("this arm pre-trains, but --pretrain-epochs is 0: use --no-pretrain for that arm")
        from pneumo_ray.distributed.ablation import run_ablation

        name = args.name or f"ablate-{args.preset}"
        return run_ablation(sweep, arm, list(range(args.seeds)), args, name=name, out=Path(args.results) / name)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
