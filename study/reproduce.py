"""python -m study.reproduce — re-run one trial or seed of a finished study and compare it with the record.

Trains the chosen ablation seed (--arm, --model, --seed) or sweep trial (--trial) again, in plain
PyTorch without Ray, from the study's run record: its configuration, its data, and the device and
torch threads its row records. The pre-training is computed again too (never read from the store).
Prints, for every number that was recorded, the recorded value, the re-run's and their difference:
each pre-training and fine-tuning epoch's training loss, validation loss and AUC, the best-validation
weights against the checkpoint's, and the test probability of every image (the largest difference).
On the machine kind that made the study, under the recorded conditions, every difference is 0
("bit-exact"); elsewhere the largest is shown. Exit status 0 when the largest difference is within
--tolerance (default 0: bit for bit), 1 when it is not.
"""

from __future__ import annotations

import argparse
import sys
import time

from study import common


def get_args_parser() -> argparse.ArgumentParser:
    p = common.ArgumentParser(
        prog="python -m study.reproduce",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  python -m study.reproduce results/real-tuned                        # transfer arm, first model, seed 0\n"
        "  python -m study.reproduce results/real-tuned --arm no-pretrain --seed 3\n"
        "  python -m study.reproduce results/my-sweep --trial 1a2b3c4d_00002\n"
        "  python -m study.reproduce results/real-tuned --threads 2 --tolerance 1e-3   # on other conditions",
    )
    p.add_argument("folder", help="a finished study: results/<name> of study.sweep or study.ablate")
    p.add_argument("--trial", help="sweep: the trial id (default: the best trial by validation AUC)")
    p.add_argument("--arm", help="ablation: the arm (default: transfer)")
    p.add_argument("--model", help="the model (default: the study's first)")
    p.add_argument("--seed", type=int, help="ablation: the seed (default: the lowest)")
    p.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        help="where to train (default: the device the row records, else cpu)",
    )
    p.add_argument("--threads", type=int, help="torch threads (default: those the row records)")
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.0,
        help="largest difference accepted (default 0: bit for bit; e.g. 1e-3 on another machine kind)",
    )
    common.add_debug_flag(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    from pneumo_ray.config.errors import UserError

    if args.tolerance < 0:
        raise UserError(f"--tolerance {args.tolerance:g}: a difference is never negative; give 0 or more")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads {args.threads}: give 1 or more torch threads")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError("--device cuda: torch sees no CUDA GPU on this machine; give --device cpu")
    from pneumo_ray.train.reproduce import describe, recorded_run, reproduce

    t0 = time.time()
    rec = recorded_run(args.folder, trial=args.trial, arm=args.arm, model=args.model, seed=args.seed)
    agreement = reproduce(rec, device=args.device, threads=args.threads)
    lines, ok = describe(agreement, args.tolerance)
    print("\n".join(lines))
    print(f"({time.time() - t0:.0f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(common.run_main(main))
