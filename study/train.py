"""python -m study.train — one pretrain → finetune run, plain PyTorch, no Ray.

With no --data-root the run uses the embedded synthetic phantoms (target + a shifted source domain
for pre-training), so it works on a fresh machine with no downloads.
"""

from __future__ import annotations

import argparse
import json
import sys

from pneumo_ray.config.data import DataSpec
from pneumo_ray.config.errors import FieldError, UserError
from pneumo_ray.config.train import COMPILE_MODES, TrainConfig
from study import common


def get_args_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = common.ArgumentParser(
        prog="python -m study.train",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Pre-train on CoronaHack (or the synthetic source), fine-tune on Kermany (or the synthetic "
        "target), choose the threshold on validation and evaluate once on test. Writes "
        "OUT/metrics.json, OUT/predictions.parquet, OUT/history.parquet and the weights.",
        epilog="examples:\n  python -m study.train                     # synthetic data, a minute or two on a CPU\n"
        "  python -m study.train --data-root ~/data/chest_xray --pretrain-root ~/data/coronahack "
        "--model cnn --image-size 64 --epochs 3 --out runs/cnn64",
    )
    g = common.add_data_args(p)
    g.add_argument("--no-pretrain", action="store_true", help="skip pre-training (random initialisation)")
    g.add_argument(
        "--allow-test-overlap",
        action="store_true",
        help="pre-train on all CoronaHack TRAIN images, even those whose file name or patient is in the "
        "target's validation/test sets (the seed's protocol; leaks the hold-out)",
    )
    p.add_argument("--model", choices=["cnn", "densenet"], default=d.model)
    p.add_argument("--image-size", type=int, default=d.image_size)
    p.add_argument("--epochs", type=int, default=d.epochs, help="fine-tuning epochs")
    p.add_argument("--pretrain-epochs", type=int, default=d.pretrain_epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--aug-strength", type=float, default=d.aug_strength, help="0 = none … 1 = full (fine-tuning)")
    p.add_argument("--pretrain-aug-strength", type=float, default=d.pretrain_aug_strength)
    p.add_argument(
        "--class-weight", default="auto", help="'auto' (inverse frequency) or the NORMAL weight (PNEUMONIA = 1)"
    )
    p.add_argument(
        "--class-weight-scale",
        type=float,
        default=d.class_weight_scale,
        help="multiplies the NORMAL weight (what a sweep searches; the README's tuned CNN: 0.514)",
    )
    p.add_argument("--lr", type=float, default=d.lr, help="fine-tuning learning rate")
    p.add_argument("--pretrain-lr", type=float, default=d.pretrain_lr)
    p.add_argument("--optimizer", choices=["adamw", "adam"], default=d.optimizer)
    p.add_argument("--freeze-backbone", action="store_true", help="fine-tune only the classifier head")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument(
        "--compile",
        nargs="?",
        const="default",
        choices=COMPILE_MODES,
        metavar="MODE",
        help="train through torch.compile; MODE: default (without a MODE), reduce-overhead (adds CUDA graphs: "
        "for small batches on a GPU, where the GPU waits for kernel launches) or max-autotune. Each phase "
        "compiles first (about 40 s on a 2-core CPU for the CNN at 32 px, a minute or more for DenseNet-121). "
        "On a CPU, or with small images and models, it saves little or nothing: it is for GPUs",
    )
    common.add_ingredient_flags(p.add_argument_group("fine-tuning ingredients (off unless given)"), "fine-tuning", d)
    p.add_argument("--out", default="results/train", help="output folder")
    common.add_debug_flag(p)
    return p


def class_weight(text: str) -> str | float:
    """--class-weight: 'auto' or a number (TrainConfig checks that it is above 0)."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise FieldError(
            "class_weight", text, "give 'auto' (inverse class frequency) or the NORMAL weight, a number above 0"
        ) from None


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run's TrainConfig; UserError naming the flag for a value that is not valid."""
    if args.no_pretrain and args.pretrain_epochs != TrainConfig().pretrain_epochs:
        raise UserError(f"--no-pretrain and --pretrain-epochs {args.pretrain_epochs} contradict each other: give one")
    cw = class_weight(args.class_weight)
    return TrainConfig(
        model=args.model,
        image_size=args.image_size,
        epochs=args.epochs,
        pretrain_epochs=0 if args.no_pretrain else args.pretrain_epochs,
        lr=args.lr,
        pretrain_lr=args.pretrain_lr,
        batch_size=args.batch_size,
        aug_strength=args.aug_strength,
        pretrain_aug_strength=args.pretrain_aug_strength,
        class_weight=cw,
        class_weight_scale=args.class_weight_scale,
        optimizer=args.optimizer,
        freeze_backbone=args.freeze_backbone,
        val_fraction=args.val_fraction,
        seed=args.seed,
        **common.ingredient_values(args),
    )


def data_spec(args: argparse.Namespace, cfg: TrainConfig) -> DataSpec:
    """The run's data: where from the flags, image size, split and pre-training from the configuration."""
    return common.data_spec(args, allow_overlap=args.allow_test_overlap).replace(
        image_size=cfg.image_size,
        split_seed=cfg.seed,
        val_fraction=cfg.val_fraction,
        use_pretrain=cfg.pretrain_epochs > 0,
    )


def check_args(args: argparse.Namespace, cfg: TrainConfig) -> None:
    """The flags that only make sense together, and the output folder; UserError before any work."""
    if cfg.freeze_backbone and args.data_root is not None and args.pretrain_root is None:
        raise UserError(
            "--freeze-backbone with --data-root but no --pretrain-root: nothing pre-trains the backbone, so it would "
            "stay random; give --pretrain-root or drop --freeze-backbone"
        )
    if args.allow_test_overlap and args.data_root is not None and args.pretrain_root is None:
        raise UserError(
            "--allow-test-overlap changes the pre-training data, and with --data-root but no --pretrain-root "
            "there is none: give --pretrain-root or drop --allow-test-overlap"
        )
    common.check_writable_folder("--out", args.out)


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(common.attach_negative_values(sys.argv[1:] if argv is None else argv, parser))
    cfg = config_from_args(args)
    spec = data_spec(args, cfg)
    check_args(args, cfg)
    from pneumo_ray.data.study_data import load_study_data
    from pneumo_ray.train.loop import pick_device
    from pneumo_ray.train.protocol import run_study

    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError("--device cuda: torch sees no CUDA GPU on this machine; give --device cpu or auto")
    device = pick_device(args.device)
    data = load_study_data(spec)
    for problem in data.info["problems"]:
        print(f"warning: {problem}", file=sys.stderr)
    print(f"device {device}; {data.train.describe()}; {data.val.describe()}; {data.test.describe()}")
    metrics = run_study(cfg, data, args.out, device, compile=args.compile)
    keys = [
        "val_auc",
        "test_auc",
        "test_accuracy",
        "test_balanced_accuracy",
        "test_sensitivity",
        "test_specificity",
        "test_f1",
        "threshold",
    ]
    print(json.dumps({k: round(metrics[k], 4) for k in keys}))
    for split in ("val", "test"):  # a metric that is NaN in metrics.json, and why
        if metrics.get(f"{split}_undefined"):
            print(f"warning: {split} metrics undefined: {metrics[f'{split}_undefined']}", file=sys.stderr)
    print(f"wrote {args.out}/metrics.json, predictions.parquet, history.parquet ({metrics['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(common.run_main(main))
