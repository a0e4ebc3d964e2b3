"""python -m study.ablate — does pre-training on CoronaHack help? Multi-seed ablation arms.

An arm trains every selected model over --seeds K seeds (Ray Train jobs on a Ray Tune grid):
  (no flag)            transfer: pre-train on the source, fine-tune unfrozen on the target
  --no-pretrain        the same models from random initialisation
  --no-augment         no augmentation (pre-training and fine-tuning)
  --no-class-weights   unweighted fine-tuning loss
  --freeze-backbone    fine-tune only the classifier head
  --allow-test-overlap pre-train on all source images, as the seed study did (a separate, labelled arm)
  --ema DECAY, --mixup ALPHA, --label-smoothing EPS, --photometric S, --tta
                       switch one fine-tuning ingredient ON: the arm is named with its value
                       ("transfer+ema-0.999"), and its pre-trainings are the transfer arm's
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

How many seeds? After a pilot of 2-3 seeds (both arms, or one), `--plan --name NAME` prints the power
of the primary test at ΔAUC 0.005 / 0.01 / 0.02 for 3, 5, 10 and 20 seeds from the variance measured
in those seeds, the seeds needed for 80 % power at --delta, and their cost at the measured time per
seed; it reads the results only (no Ray, seconds).

Results: <results>/<name>/ablations.parquet, ablation_predictions.parquet, ablation_val_predictions.parquet,
ablation_summary.parquet, audit_summary.parquet, run.json (with --ensemble: ensemble.parquet,
ensemble_predictions.parquet). Re-running an arm runs only seeds it lacks.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pneumo_ray.config.arms import CHANGES, AblationSpec, Arm
from pneumo_ray.config.errors import FieldError, UserError, flag_of
from pneumo_ray.config.output import OutputSpec
from pneumo_ray.config.sweep import SweepConfig
from pneumo_ray.storage.lock import check_free
from study import common

# the arm flags, one per ingredient switched off (config/arms.py CHANGES)
FLAGS = tuple("--" + change.replace("_", "-") for change in CHANGES)
# the flags that shape the SweepConfig (no --num-samples: --tune sets the search budget; no --seed:
# seeds are the replicates, --split-seed the validation split)
SWEEP_FLAGS = [*common.LENGTHS, *common.SEARCH_FLAGS, *common.RESOURCES]


def get_args_parser() -> argparse.ArgumentParser:
    p = common.ArgumentParser(
        prog="python -m study.ablate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  python -m study.ablate --preset smoke --seeds 2 --name demo\n"
        "  python -m study.ablate --preset smoke --seeds 2 --name demo --no-pretrain\n"
        "  python -m study.ablate --summarize results/demo\n"
        "  python -m study.ablate --plan --name demo --delta 0.01       # how many seeds, from those run\n"
        "  python -m study.ablate --preset cpu --models cnn --seeds 5 --tune 6 --name real \\\n"
        "      --data-root ~/data/chest_xray --pretrain-root ~/data/coronahack\n"
        "      # then the same with --no-pretrain: each arm tuned on its own\n"
        "  python -m study.ablate --preset cpu --models cnn --seeds 3 --data-root ~/data/chest_xray \\\n"
        "      --pretrain-root ~/data/coronahack --from results/my-sweep --name cnn-transfer",
    )
    p.add_argument("--summarize", metavar="FOLDER", help="only print (and write) the statistics of an ablation folder")
    plan = p.add_argument_group("planning: how many seeds (reads --results/--name only; no training, no Ray)")
    plan.add_argument(
        "--plan",
        action="store_true",
        help="print the power of the primary test for 3-20 seeds and the seeds needed for 80%% power at --delta, "
        "from the seeds already run under --name (a pilot of 2-3 seeds per arm is enough to start)",
    )
    plan.add_argument(
        "--delta",
        type=float,
        default=None,
        metavar="ΔAUC",
        help="with --plan: the smallest test-AUC difference worth finding (default 0.01)",
    )
    plan.add_argument(
        "--pair-correlation",
        type=float,
        default=None,
        metavar="R",
        help="with --plan, where only one arm has run: the assumed correlation of two arms' test AUCs at the "
        "same seed (default 0: pairing helps nothing, the cautious choice)",
    )
    arms = p.add_argument_group("arm (no flag: transfer)")
    for flag in FLAGS:
        arms.add_argument(flag, action="store_true")
    arms.add_argument(
        "--allow-test-overlap",
        action="store_true",
        help="pre-train on all source images, also those sharing a name, patient or content with the "
        "target's validation/test sets (the seed's protocol)",
    )
    common.add_ingredient_flags(arms, "switch on")
    a = p.add_argument_group("seeds and configuration")
    a.add_argument("--seeds", type=int, default=5, help="seeds 0..K-1 per model (default 5)")
    a.add_argument(
        "--split-seed",
        type=int,
        default=None,
        help="seed of the patient-grouped validation split, the same for every arm (default: the preset's)",
    )
    a.add_argument(
        "--tune",
        type=int,
        metavar="N",
        default=None,
        help="tune each arm on its own: an Optuna search of N trials per model on validation AUC, then the "
        "seeds at the arm's best configuration (the fair protocol; reused when the arm runs again)",
    )
    a.add_argument(
        "--ensemble",
        type=int,
        nargs="?",
        const=5,
        default=0,
        metavar="K",
        help="also build the arm's ensemble of its seeds: at most K picks (default 5 when given without K), chosen "
        "on validation AUC only, then applied once to test and shown beside the arm's mean over seeds",
    )
    a.add_argument(
        "--from",
        dest="from_",
        metavar="SWEEP",
        help="take each model's configuration from this sweep folder (tuned for the sweep's arm)",
    )
    common.add_sweep_flags(
        p, preset_help="lengths and resources (default: smoke; python -m study.sweep --help lists the presets)"
    )
    common.add_data_args(p)
    common.add_output_args(
        p,
        "ablation name: run every arm under the same one (default: ablate-<preset>)",
        "complete this arm's interrupted run",
    )
    common.add_debug_flag(p)
    return p


def summarize(args: argparse.Namespace) -> int:
    """--summarize FOLDER: the statistics of the arms already there; nothing runs."""
    given = [f for f in (*FLAGS, "--allow-test-overlap") if getattr(args, f[2:].replace("-", "_"))]
    given += [f for f, v in (("--tune", args.tune), ("--from", args.from_)) if v is not None]
    given += ["--ensemble"] if args.ensemble else []
    given += [flag_of(field) for field in common.ingredient_values(args)]
    if given:
        raise UserError(
            f"--summarize only reads {args.summarize}, so {', '.join(given)} would be ignored: drop them "
            f"(python -m study.ensemble {args.summarize} builds the arms' ensembles)"
        )
    if not Path(args.summarize).is_dir():
        raise UserError(f"--summarize {args.summarize}: no such folder; give a study.ablate results folder")
    from pneumo_ray.distributed.ablation import print_summary

    return print_summary(Path(args.summarize))  # a damaged table: UserError naming it


def plan(args: argparse.Namespace) -> int:
    """--plan: the seed plan of the ablation in --results/--name; reads its tables, nothing runs."""
    ignored = [f for f in (*FLAGS, "--allow-test-overlap") if getattr(args, f[2:].replace("-", "_"))]
    ignored += [f for f, v in (("--tune", args.tune), ("--from", args.from_), ("--summarize", args.summarize)) if v]
    ignored += [flag_of(field) for field in common.ingredient_values(args)]
    ignored += ["--resume"] if args.resume else []
    ignored += ["--ensemble"] if args.ensemble else []
    if ignored:
        raise UserError(f"--plan only reads the seeds already run, so {', '.join(ignored)} would be ignored: drop them")
    delta = 0.01 if args.delta is None else args.delta
    if not 0 < delta < 0.5:
        raise UserError(
            f"--delta {args.delta:g}: give the smallest AUC difference worth finding, above 0 and below 0.5 (e.g. 0.01)"
        )
    r = 0.0 if args.pair_correlation is None else args.pair_correlation
    if not -1 < r < 1:
        raise UserError(f"--pair-correlation {r:g}: a correlation strictly between -1 and 1 (default 0)")
    folder = OutputSpec(name=args.name or f"ablate-{args.preset}", results=args.results).folder
    from pneumo_ray.analysis.plan import format_plan, seed_plans
    from pneumo_ray.storage.results import read_table

    pilot = f"python -m study.ablate --name {folder.name} --seeds 3 ... (and again with --no-pretrain)"
    if not (folder / "ablations.parquet").is_file():
        where = "no such folder" if not folder.is_dir() else "no ablations.parquet in it (no seeds run there yet)"
        raise UserError(f"--plan: {folder}: {where}; run a pilot of 2-3 seeds first: {pilot}")
    try:
        tables = [read_table(folder, t) for t in ("ablations", "ablation_predictions")]
    except ValueError as e:  # a damaged table, named
        raise UserError(f"--plan: {e}") from None
    plans = seed_plans(*tables, delta=delta, pair_correlation=r)
    if not plans:
        raise UserError(
            f"--plan: {folder}: no arm has 2 finished seeds with test predictions, and the seed-to-seed variance "
            f"needs 2; run more: {pilot}"
        )
    print(format_plan(plans))
    return 0


def specs(args: argparse.Namespace) -> tuple[SweepConfig, AblationSpec, OutputSpec]:
    """The arm's settings from the flags; UserError, naming the flag, for any that is not valid."""
    split = {} if args.split_seed is None else {"seed": args.split_seed}
    sweep = common.sweep_config(args.preset, args, SWEEP_FLAGS, flag_names={"seed": "--split-seed"}, **split)
    if args.seeds < 1:
        raise FieldError("seeds", args.seeds, "give the number of seeds per model (seeds 0..K-1), at least 1")
    arm = Arm(
        tuple(change for change in CHANGES if getattr(args, change)),
        allow_overlap=args.allow_test_overlap,
        on=tuple(common.ingredient_values(args).items()),
    )
    ablation = AblationSpec(
        arm=arm, seeds=tuple(range(args.seeds)), tune=args.tune, from_=args.from_, ensemble=args.ensemble
    )
    if arm.pretrains and sweep.pretrain_epochs == 0:
        raise UserError(f"arm {arm.name} pre-trains, but --pretrain-epochs is 0: use --no-pretrain for that arm")
    if ablation.from_ and not Path(ablation.from_).is_dir():
        raise UserError(f"--from {ablation.from_}: no such folder; give a finished study.sweep results folder")
    if ablation.from_ and not (Path(ablation.from_) / "trials.parquet").is_file():
        raise UserError(f"--from {ablation.from_}: no trials.parquet (is it a finished study.sweep folder?)")
    out = common.output_spec(args, name=f"ablate-{args.preset}" if args.name is None else args.name)
    check_free(out.folder)  # a sweep or ablation running there: refused, naming it, before any other check
    run = common.read_run_json(out.folder, "--name")  # arms are added to it: a damaged one stops here
    if args.resume and run is None:
        raise UserError(f"--resume: {out.folder / 'run.json'} not found (which --name was interrupted?)")
    common.check_address(out.address)
    common.check_local_gpus(sweep, out, typed=args.gpus_per_trial is not None)
    return sweep, ablation, out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = get_args_parser()
    args = parser.parse_args(common.attach_negative_values(argv, parser))
    if args.plan:
        return plan(args)
    given = [f for f, v in (("--delta", args.delta), ("--pair-correlation", args.pair_correlation)) if v is not None]
    if given:
        it = "it" if len(given) == 1 else "them"
        raise UserError(
            f"{' and '.join(given)}: only with --plan (planning from the seeds run): add --plan or drop {it}"
        )
    if args.summarize:
        return summarize(args)
    sweep, ablation, out = specs(args)
    data = ablation.arm.data_spec(sweep, common.data_spec(args))
    from pneumo_ray.distributed.ablation import run_ablation

    # its own checks (arms run with other settings, an interrupted run) are UserErrors before any work
    return run_ablation(sweep, ablation, data, out)


if __name__ == "__main__":
    sys.exit(common.run_main(main))
