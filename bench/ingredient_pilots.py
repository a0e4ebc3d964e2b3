"""Short pilots of the fine-tuning ingredients on the real data, to choose which deserve a full
`study.ablate` arm: the README's tuned CNN configuration (64 px, 2 pre-training + 6 fine-tuning
epochs, augmentation 0.087, NORMAL class-weight scale 0.514, lr 2.04e-3) plus one ingredient at a
time, per seed; validation AUC, test AUC, accuracy, balanced accuracy, sensitivity, specificity.

Each row is what `python -m study.train <the same flags> --seed S` gives (no Ray), at less cost:
- one pre-training per seed serves every row of that seed (the ingredients do not touch it, so
  study.train would compute the same weights each time);
- EMA and TTA do not change the training steps (the weights trained are the same bit for bit:
  tests/test_ingredients.py), so one fine-tuning gives the base, ema and tta rows, each with its
  own selection of the best validation epoch (EMA weights or live ones, validation with or without
  the TTA views), as study.train with --ema / --tta selects;
- mixup, label smoothing and photometric each fine-tune on their own.
So a seed costs 2 + 4 × 6 epochs instead of 5 × 8. The test set is applied once per row, after its
selection; nothing is chosen on it.

    python bench/ingredient_pilots.py --data-root ../shared/data/chest_xray \\
        --pretrain-root ../shared/data/coronahack --seeds 0 1 --out results/pilots
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pneumo_ray.config.data import DataSpec  # noqa: E402
from pneumo_ray.config.train import TrainConfig  # noqa: E402
from pneumo_ray.data.study_data import load_study_data  # noqa: E402
from pneumo_ray.train.loop import evaluate  # noqa: E402
from pneumo_ray.train.models import build_model  # noqa: E402
from pneumo_ray.train.protocol import finetune, pretrain, test_evaluation, validation_summary  # noqa: E402

TUNED = dict(aug_strength=0.087, class_weight_scale=0.514, lr=2.04e-3)  # README: both arms' searches chose these
TRAINED = {"mixup": dict(mixup=0.2), "label-smoothing": dict(label_smoothing=0.1), "photometric": dict(photometric=0.5)}
EMA = 0.999
SHOWN = ("val_auc", "test_auc", "test_accuracy", "test_balanced_accuracy", "test_sensitivity", "test_specificity")


def flags(changes: dict) -> str:
    """The study.train flags of a row's ingredients."""
    return " ".join(f"--{k.replace('_', '-')}" + ("" if v is True else f" {v:g}") for k, v in changes.items())


class Scorers:
    """The base trajectory's selections of the live weights, validated without and with TTA (fit itself
    selects the EMA's). Each keeps its best validation epoch's weights, as fit does for the one it runs."""

    def __init__(self, data, device) -> None:
        self.data, self.device, self.best = data, device, {}

    def __call__(self, state) -> None:
        r = state.result
        for name, weights, tta in (("base", state.model, False), ("tta", state.model, True)):
            model = build_model("cnn")
            model.load_state_dict(weights)
            ev = evaluate(model, self.data.val, normalize=r.normalize, weights=r.weights, device=self.device, tta=tta)
            if ev["auc"] > self.best.get(name, {}).get("auc", -1):
                self.best[name] = dict(auc=ev["auc"], epoch=state.epoch, weights=weights, probs=ev["probs"], tta=tta)


def row(name: str, seed: int, changes: dict, data, device, weights, val_probs, epoch, result, tta: bool) -> dict:
    model = build_model("cnn")
    model.load_state_dict(weights)
    metrics = validation_summary(data, val_probs, result.threshold)
    test, _ = test_evaluation(model.to(device), data, result.normalize, result.threshold, device, tta)
    return dict(ingredient=name, seed=seed, flags=flags(changes), best_epoch=epoch, **metrics, **test)


def run_seed(seed: int, data, device, log) -> list[dict]:
    cfg = TrainConfig(model="cnn", image_size=64, pretrain_epochs=2, epochs=6, seed=seed, **TUNED)
    t0 = time.time()
    init, _ = pretrain(cfg, data, device, log=None)
    log(f"seed {seed}: pre-training {time.time() - t0:.0f} s")
    rows = []
    t0 = time.time()
    scorers = Scorers(data, device)
    _, res = finetune(cfg.replace(ema=EMA), data, device, init_state=init, on_state=scorers, log=None)
    rows.append(
        row("ema", seed, dict(ema=EMA), data, device, res.best_state, res.best_val_probs, res.best_epoch, res, False)
    )
    for name, changes in (("base", {}), ("tta", dict(tta=True))):
        b = scorers.best[name]
        rows.append(row(name, seed, changes, data, device, b["weights"], b["probs"], b["epoch"], res, b["tta"]))
    log(f"seed {seed}: base trajectory (base, ema, tta) {time.time() - t0:.0f} s")
    for name, changes in TRAINED.items():
        t0 = time.time()
        _, res = finetune(cfg.replace(**changes), data, device, init_state=init, log=None)
        rows.append(
            row(name, seed, changes, data, device, res.best_state, res.best_val_probs, res.best_epoch, res, False)
        )
        log(f"seed {seed}: {name} {time.time() - t0:.0f} s")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", required=True)
    p.add_argument("--pretrain-root", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--out", default="results/pilots", help="pilots.parquet and pilots.json go here")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cpu")
    done = pd.read_parquet(out / "pilots.parquet") if (out / "pilots.parquet").exists() else pd.DataFrame()
    rows = done.to_dict("records")
    for seed in args.seeds:
        if len(done) and seed in set(done["seed"]):
            continue
        # study.train's data for --seed S: the split by that seed
        spec = DataSpec(data_root=args.data_root, pretrain_root=args.pretrain_root, image_size=64, split_seed=seed)
        data = load_study_data(spec, quiet=True, log=None)
        rows += run_seed(seed, data, device, lambda s: print(s, flush=True))
        pd.DataFrame(rows).drop(columns=["val_undefined", "test_undefined"], errors="ignore").to_parquet(
            out / "pilots.parquet", index=False
        )
    df = pd.DataFrame(rows)
    table = df.groupby("ingredient", sort=False)[list(SHOWN)].agg(["mean", "min", "max"])
    print(f"\n{len(set(df.seed))} seed(s): mean [min, max]")
    for name, r in table.iterrows():
        cells = "  ".join(f"{k} {r[(k, 'mean')]:.4f} [{r[(k, 'min')]:.4f}, {r[(k, 'max')]:.4f}]" for k in SHOWN)
        print(f"{name:16s} {cells}")
    base = df[df.ingredient == "base"].set_index("seed")
    print("\npaired differences from base, per seed (test AUC, balanced accuracy):")
    for name, g in df[df.ingredient != "base"].groupby("ingredient", sort=False):
        g = g.set_index("seed")
        d_auc = (g.test_auc - base.test_auc).dropna()
        d_bal = (g.test_balanced_accuracy - base.test_balanced_accuracy).dropna()
        print(f"{name:16s} ΔAUC {np.round(d_auc.to_numpy(), 4)}  Δbal.acc {np.round(d_bal.to_numpy(), 4)}")
    (out / "pilots.json").write_text(json.dumps(df.to_dict("records"), indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
