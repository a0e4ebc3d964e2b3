"""GPU-hour and wall-clock estimate of a sweep preset (default: `--preset paper`), from its config and a
training throughput per model.

    python bench/gpu_hours.py                                   # paper preset, H200 rates, 4 GPUs
    python bench/gpu_hours.py --img-per-s densenet=410,cnn=1900 --gpus 8   # your measured figures

From Python, `estimate_from_rates(measured)` does the same for measured figures (bench/gpu_check.py
measures them on a GPU and calls it).

The sweep's settings come from `pneumo_ray/config/sweep.py` (SweepConfig defaults and PRESETS), which
imports neither torch nor Ray, so this runs in well under a second without them or a GPU.

What is counted, per model (the sweep runs one Tune experiment per model, one after the other):
  - pre-training: one Ray Train job per distinct pre-training key, i.e. per pre-training learning rate
    (the other pre-training settings are fixed), shared by every trial that draws that rate; each runs
    all `pretrain_epochs` on the source (CoronaHack TRAIN after the leakage exclusion), 90% of it for
    training and a 10% patient-grouped hold-out evaluated every epoch. ASHA never stops pre-training.
  - fine-tuning: `num_samples` trials on the target's training split (Kermany train minus the
    `val_fraction` validation hold-out), validating on the hold-out every epoch.
      worst case: every trial runs all `epochs` (no early stopping);
      expected:   ASHA's rungs (as Ray builds them: grace * rf**k below max_t) each let 1/rf of the
                  trials through. Ray's ASHA is asynchronous (a trial is stopped when it is below the
                  median of those already recorded at that rung, so the first ones always continue): it
                  lets somewhat more through (for the paper preset about 12 instead of 11.25 epochs per trial,
                  simulating Ray's rule with trials arriving in random order), so the true
                  figure lies between the two, near `expected`.
  - test: each trial's best-validation checkpoint applied once to the test set.
  - start-up: every trial / evaluation task holds its GPU while it sets up (a trial runs in a process
    Tune reuses, so this is mostly model build and data map; a DDP job also starts its workers).
Validation and test passes run at `--eval-speedup` x the training throughput (forward only, batch 128).

The throughputs are per trial (one trial = `gpus_per_trial` GPUs, 1 in the paper preset); GPU-hours
are trial-seconds x gpus_per_trial. The DEFAULT THROUGHPUTS ARE MEASURED on one NVIDIA H200 (torch 2.11,
bf16 autocast, channels-last, 224 px, batch 32, the real Kermany training set resident on the GPU):
bench/gpu_check.py's loop rates reported in issue 20 (2026-12), before the one-copy augmentation
parameters; DenseNet-121 is launch-bound at batch 32 there (574 img/s; 2649 at batch 256). An A10G
(cluster.yaml's g5 nodes) is slower: measure yours and pass it. The evaluation speed-up stays an
assumption (not reported). Measure with
    python bench/gpu_check.py                   # both models, loop rates, syncs, GPU-hours
or the `img/s` that
    python -m study.train --data-root ... --pretrain-root ... --model densenet --image-size 224 \\
        --pretrain-epochs 0 --epochs 2 --device cuda
prints for each fine-tuning epoch on your GPU (take the second epoch; the same figure is in
history.parquet's train_images_per_s).

Wall-clock for `--gpus N` assumes ideal packing: trials run min(N / gpus_per_trial, num_samples) at a
time; the distinct pre-trainings run first, in parallel (trials that need one wait for it without
holding a GPU); then fine-tuning, never shorter than one trial's full run; then the test passes.
Data download and the one-off image decoding into the cache (CPU) are not included.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# MEASURED single-GPU training throughputs, img/s: one H200, bf16 autocast, channels-last, batch 32,
# 224 px, the project's loop (bench/gpu_check.py, issue 20). The name stays: it is what the estimate
# assumes when no --img-per-s is given.
ASSUMED_IMG_PER_S = {"cnn": 5380.0, "densenet": 574.0}
MEASURED_ON = "one H200, bf16, batch 32, 224 px (issue 20)"
ASSUMED_EVAL_SPEEDUP = 3.0  # forward-only passes vs training, img/s ratio
# per trial / evaluation task, GPU held: a trial in a reused process measured a 2.2 s median fixed cost
# on CPU (bench/ray_overhead.py: model build, data map, reports); a slot's first trial and each
# evaluation task start a process (~4 s); CUDA context and the data's copy to the GPU add a little.
ASSUMED_STARTUP_S = 6.0


def read_sweep_settings() -> tuple[dict, dict]:
    """(SweepConfig field defaults, PRESETS) from the configuration home, which imports neither
    torch nor Ray."""
    from pneumo_ray.config.sweep import PRESETS, SweepConfig

    return dataclasses.asdict(SweepConfig()), PRESETS


def asha_milestones(max_t: int, grace: int, rf: int) -> list[int]:
    """ASHA's rungs as Ray's _Bracket builds them (s=0), below max_t (a rung at max_t stops nothing)."""
    n = int(math.log(max_t / grace) / math.log(rf) + 1)
    return sorted(m for m in (grace * rf**k for k in range(n)) if m < max_t)


def expected_epochs_per_trial(max_t: int, grace: int, rf: int) -> float:
    """Mean fine-tuning epochs per trial when each rung lets 1/rf of the trials through."""
    edges = [0, *asha_milestones(max_t, grace, rf), max_t]
    return sum((edges[k + 1] - edges[k]) / rf**k for k in range(len(edges) - 1))


def estimate(
    cfg: dict,
    img_per_s: dict,
    *,
    target_train: int,
    source: int,
    test: int,
    source_val: float,
    eval_speedup: float,
    startup_s: float,
    gpus: int,
) -> list[dict]:
    n_ft = round(target_train * (1 - cfg["val_fraction"]))
    n_val = target_train - n_ft
    n_src_val = round(source * source_val)
    n_src = source - n_src_val
    gpt = cfg["gpus_per_trial"] or 1.0
    conc = max(1, min(int(gpus / gpt + 1e-9), cfg["num_samples"]))
    e_exp = expected_epochs_per_trial(cfg["epochs"], cfg["grace_period"], cfg["reduction_factor"])
    rows = []
    for model in cfg["models"]:
        t = img_per_s[model]
        ev = t * eval_speedup
        n_pre = min(len(cfg["pretrain_lrs"]), cfg["num_samples"]) if cfg["pretrain_epochs"] > 0 else 0
        pre_one = cfg["pretrain_epochs"] * (n_src / t + n_src_val / ev) + startup_s if n_pre else 0.0
        ft_epoch = n_ft / t + n_val / ev
        ft_full = cfg["epochs"] * ft_epoch + startup_s  # one trial, all epochs
        ft_worst = cfg["num_samples"] * ft_full
        ft_exp = cfg["num_samples"] * (e_exp * ft_epoch + startup_s)
        test_one = test / ev + startup_s
        test_all = cfg["num_samples"] * test_one
        pre_all = n_pre * pre_one
        h = gpt / 3600  # trial-seconds → GPU-hours
        wall_pre = math.ceil(n_pre / conc) * pre_one if n_pre else 0.0
        wall_test = math.ceil(cfg["num_samples"] / conc) * test_one
        rows.append(
            dict(
                model=model,
                img_per_s=t,
                pretrainings=n_pre,
                pre_h=pre_all * h,
                ft_worst_h=ft_worst * h,
                ft_exp_h=ft_exp * h,
                test_h=test_all * h,
                total_worst_h=(pre_all + ft_worst + test_all) * h,
                total_exp_h=(pre_all + ft_exp + test_all) * h,
                concurrency=conc,
                gpus=gpus,
                wall_worst_s=wall_pre + math.ceil(cfg["num_samples"] / conc) * ft_full + wall_test,
                wall_exp_s=wall_pre + max(ft_exp / conc, ft_full) + wall_test,
                sizes=dict(finetune=n_ft, val=n_val, source=n_src, source_val=n_src_val, test=test),
            )
        )
    return rows


def estimate_from_rates(
    img_per_s: dict[str, float],
    *,
    preset: str = "paper",
    eval_speedup: float = ASSUMED_EVAL_SPEEDUP,
    startup_s: float = ASSUMED_STARTUP_S,
    gpus: int = 4,
    target_train: int = 5216,
    source: int = 4239,
    test: int = 624,
    source_val: float = 0.1,
) -> tuple[dict, list[dict]]:
    """The preset's cost from training rates per model (img/s of one trial, measured), and the
    measured evaluation speed-up where known. Returns (the preset's settings, one row per model as
    `estimate` gives them). A model of the preset without a rate is an error, never an assumption."""
    defaults, presets = read_sweep_settings()
    cfg = {**defaults, **presets[preset]}
    missing = [m for m in cfg["models"] if m not in img_per_s]
    if missing:
        raise ValueError(f"no measured training rate for {', '.join(missing)} (preset {preset})")
    rows = estimate(
        cfg,
        img_per_s,
        target_train=target_train,
        source=source,
        test=test,
        source_val=source_val,
        eval_speedup=eval_speedup,
        startup_s=startup_s,
        gpus=gpus,
    )
    return cfg, rows


def table_lines(cfg: dict, rows: list[dict]) -> list[str]:
    """The GPU-hours table (per model and all) and the wall-clock line, as printed."""
    head = ["model", "pre-train", "fine-tune worst", "fine-tune expected", "test", "total worst", "total expected"]
    table = [
        [
            r["model"],
            f"{r['pre_h']:.2f} ({r['pretrainings']} run{'s' * (r['pretrainings'] != 1)})",
            f"{r['ft_worst_h']:.2f}",
            f"{r['ft_exp_h']:.2f}",
            f"{r['test_h']:.2f}",
            f"{r['total_worst_h']:.2f}",
            f"{r['total_exp_h']:.2f}",
        ]
        for r in rows
    ]
    keys = ("pre_h", "ft_worst_h", "ft_exp_h", "test_h", "total_worst_h", "total_exp_h")
    tot = {k: sum(r[k] for r in rows) for k in keys}
    table.append(["all", *(f"{tot[k]:.2f}" for k in keys)])
    w = [max(len(str(x)) for x in col) for col in zip(head, *table)]
    unit = "GPU-hours" if cfg["gpus_per_trial"] else "trial-hours"  # a CPU preset: hours of one trial's CPUs
    lines = [f"{unit:<11}" + "  ".join(h.rjust(n) for h, n in zip(head, w))]
    lines += [" " * 11 + "  ".join(str(x).rjust(n) for x, n in zip(line, w)) for line in table]
    conc = rows[0]["concurrency"]
    gpus = rows[0]["gpus"]
    lines += [
        "",
        f"wall-clock on {gpus} GPU(s) ({conc} trial(s) at a time; models one after the other): "
        + "; ".join(f"{r['model']} {_hm(r['wall_exp_s'])} expected / {_hm(r['wall_worst_s'])} worst" for r in rows)
        + f"; sweep {_hm(sum(r['wall_exp_s'] for r in rows))} expected / "
        f"{_hm(sum(r['wall_worst_s'] for r in rows))} worst",
    ]
    return lines


def _hm(seconds: float) -> str:
    m = round(seconds / 60)
    return f"{m // 60}h{m % 60:02d}" if m >= 60 else f"{m} min"


def _throughputs(items: list[str]) -> dict:
    out = {}
    for item in items:
        for part in item.split(","):
            if part.strip():
                k, _, v = part.partition("=")
                try:
                    out[k.strip()] = float(v)
                except ValueError:
                    raise ValueError(f"--img-per-s wants MODEL=N (e.g. densenet=350), got {part!r}") from None
                if not out[k.strip()] > 0:
                    raise ValueError(f"--img-per-s must be positive, got {part!r}")
    return out


def main(argv=None) -> int:
    defaults, presets = read_sweep_settings()
    p = argparse.ArgumentParser(
        prog="python bench/gpu_hours.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", choices=sorted(presets), default="paper")
    p.add_argument(
        "--img-per-s",
        action="append",
        default=[],
        metavar="MODEL=N[,MODEL=N]",
        help="training images/s of one trial, per model (default: measured on "
        + MEASURED_ON
        + ": "
        + ", ".join(f"{k}={v:g}" for k, v in ASSUMED_IMG_PER_S.items())
        + ")",
    )
    p.add_argument(
        "--eval-speedup",
        type=float,
        default=ASSUMED_EVAL_SPEEDUP,
        help="validation/test img/s as a multiple of training img/s (default: assumed %(default)g)",
    )
    p.add_argument(
        "--startup-s",
        type=float,
        default=ASSUMED_STARTUP_S,
        help="GPU-held set-up seconds per trial / test task (default: assumed %(default)g)",
    )
    p.add_argument("--gpus", type=int, default=4, help="GPUs in the cluster, for the wall-clock (default 4)")
    p.add_argument("--num-samples", type=int, help="override the preset's trials per model")
    p.add_argument("--epochs", type=int, help="override the preset's fine-tuning epochs")
    p.add_argument("--pretrain-epochs", type=int, help="override the preset's pre-training epochs")
    p.add_argument("--target-train", type=int, default=5216, help="Kermany train images (default 5216)")
    p.add_argument(
        "--source",
        type=int,
        default=4239,
        help="CoronaHack TRAIN images left after the leakage exclusion (default 4239, measured)",
    )
    p.add_argument("--source-val", type=float, default=0.1, help="pre-training hold-out fraction (default 0.1)")
    p.add_argument("--test", type=int, default=624, help="Kermany test images (default 624)")
    args = p.parse_args(argv)

    cfg = {**defaults, **presets[args.preset]}
    for k in ("num_samples", "epochs", "pretrain_epochs"):
        if getattr(args, k) is not None:
            cfg[k] = getattr(args, k)
    try:
        given = _throughputs(args.img_per_s)
    except ValueError as e:
        p.error(str(e))
    for flag, value, low in (
        ("--startup-s", args.startup_s, 0),
        ("--eval-speedup", args.eval_speedup, 1e-9),
        ("--gpus", args.gpus, 1),
        ("--num-samples", args.num_samples, 1),
        ("--epochs", args.epochs, 1),
        ("--pretrain-epochs", args.pretrain_epochs, 0),
        ("--target-train", args.target_train, 1),
        ("--source", args.source, 0),
        ("--test", args.test, 1),
    ):
        if value is not None and not value >= low:  # also NaN
            p.error(f"{flag} {value:g}: must be at least {low:g}")
    if not 0 <= args.source_val < 1:
        p.error(f"--source-val {args.source_val:g}: must be a fraction from 0 up to (not including) 1")
    img_per_s = {**ASSUMED_IMG_PER_S, **given}
    missing = [m for m in cfg["models"] if m not in img_per_s]
    if missing:
        p.error(f"no throughput for {', '.join(missing)}: pass --img-per-s MODEL=N")
    rows = estimate(
        cfg,
        img_per_s,
        target_train=args.target_train,
        source=args.source,
        test=args.test,
        source_val=args.source_val,
        eval_speedup=args.eval_speedup,
        startup_s=args.startup_s,
        gpus=args.gpus,
    )

    s = rows[0]["sizes"]
    asha = (cfg["epochs"], cfg["grace_period"], cfg["reduction_factor"])
    print(
        f"preset {args.preset}: models {','.join(cfg['models'])}, {cfg['num_samples']} trials/model, "
        f"{cfg['image_size']} px, {cfg['epochs']} fine-tuning epochs, {cfg['pretrain_epochs']} pre-training "
        f"epochs x {len(cfg['pretrain_lrs'])} pre-training lrs, ASHA grace {cfg['grace_period']} rf "
        f"{cfg['reduction_factor']} (rungs {asha_milestones(*asha)}; expected "
        f"{expected_epochs_per_trial(*asha):.2f} of {cfg['epochs']} epochs/trial), "
        f"{cfg['gpus_per_trial'] or 1:g} GPU/trial"
    )
    print(
        f"images: fine-tune {s['finetune']} + val {s['val']} per epoch; pre-train {s['source']} + "
        f"hold-out {s['source_val']} per epoch; test {s['test']} per trial"
    )
    print(
        "throughput (training img/s per trial): "
        + ", ".join(
            f"{m} {img_per_s[m]:g} ({'given' if m in given else 'measured on ' + MEASURED_ON})" for m in cfg["models"]
        )
        + f"; eval x{args.eval_speedup:g}; start-up {args.startup_s:g} s/job"
    )
    print()
    print("\n".join(table_lines(cfg, rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
