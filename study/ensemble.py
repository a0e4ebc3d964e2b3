"""python -m study.ensemble — the validation-chosen ensemble of a finished sweep (one per model) or of
each ablation arm's seeds, built from the result tables: no training.

The members and K come from validation alone: greedy forward selection with replacement (Caruana et
al. 2004) over the trials' best-validation checkpoints, starting from the best one by validation AUC
and adding at each step the one that lowers the validation log-loss at equal class priors most,
stopping when none lowers it or after K picks. Only then is the ensemble applied
to test, once: the mean of each member's logit shifted by its own decision threshold,
logit(p) − logit(t), PNEUMONIA at ≥ 0 (K = 1 is the best single trial's own rule). It is printed beside
the best single trial (a sweep; DeLong's paired test of the two fixed models) or beside the arm's mean
over its seeds (an ablation), with 95% bootstrap intervals over the test images.

Folders written before validation predictions were kept: each best-validation checkpoint is first
applied to the validation set (torch and the run's data on this machine; no Ray cluster).

Results: <folder>/ensemble.parquet, ensemble_predictions.parquet (and val_predictions.parquet or
ablation_val_predictions.parquet where they were missing); schema in results/README.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pneumo_ray.config.errors import UserError
from study import common


def get_args_parser() -> argparse.ArgumentParser:
    p = common.ArgumentParser(
        prog="python -m study.ensemble",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  python -m study.ensemble results/my-sweep              # K as the sweep's --ensemble (default 5)\n"
        "  python -m study.ensemble results/my-sweep --ensemble 3\n"
        "  python -m study.ensemble results/my-ablation           # one ensemble per arm and model",
    )
    p.add_argument("folder", type=Path, help="a study.sweep or study.ablate results folder")
    p.add_argument(
        "--ensemble",
        type=int,
        metavar="K",
        help="at most K picks (default: the sweep's --ensemble, else 5); fix it before looking at test results",
    )
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples of the test images (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    common.add_debug_flag(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    folder = args.folder
    if not folder.is_dir():
        raise UserError(f"{folder}: no such results folder; give a folder study.sweep or study.ablate wrote")
    from pneumo_ray.distributed.ensembles import (
        DEFAULT_K,
        SWEEP,
        build_ensembles,
        kind_of,
        summary_lines,
        validation_from_checkpoints,
    )
    from pneumo_ray.storage.lock import FolderLock, check_free
    from pneumo_ray.storage.results import command_line

    check_free(folder)  # a sweep or ablation writing there is named before anything is read
    kind = kind_of(folder)
    if kind is None:
        raise UserError(f"{folder}: neither trials.parquet (a sweep) nor ablations.parquet (an ablation) is there")
    run = common.read_run_json(folder, str(folder)) or {}
    recorded = (run.get("sweep") or {}).get("ensemble") if kind is SWEEP else None
    k = args.ensemble if args.ensemble is not None else (recorded or DEFAULT_K)
    if not 1 <= k <= 100:
        raise UserError(f"--ensemble {k}: the cap on the ensemble's picks must be a whole number from 1 to 100")
    if args.n_boot < 100:
        raise UserError(f"--n-boot {args.n_boot}: must be at least 100 (fewer give unstable 95% intervals)")
    t0 = time.time()
    try:
        with FolderLock(folder, command_line()):  # a running sweep or ablation there is named and refused
            validation_from_checkpoints(folder, run)
            rows = build_ensembles(folder, k, n_boot=args.n_boot, seed=args.seed)
    except ValueError as e:  # a damaged or inconsistent table: its reader names the file
        if isinstance(e, UserError):
            raise
        raise UserError(str(e).splitlines()[0]) from None
    if rows.empty:
        raise UserError(f"{folder}: no trial has both validation and test predictions: no ensemble to build")
    for line in summary_lines(folder):
        print(line)
    print(f"\nwrote {folder}/ensemble.parquet, ensemble_predictions.parquet ({time.time() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(common.run_main(main))
