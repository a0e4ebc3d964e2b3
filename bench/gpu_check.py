"""One GPU check, without Ray, in one go (a few minutes on one GPU): does the data path ever limit
training, and what does the paper preset cost at the measured rates?

For the shallow CNN and DenseNet-121 at 224 px, batch 32, bf16 autocast, channels-last:
  loop       training images/s through the project's loop (`train_one_epoch`: the sets resident on
             the GPU, batches gathered and augmented there), mean of the epochs after the first
  data-free  images/s of the same model, optimizer, batch, autocast and memory format on one batch
             already on the device (no gather, no augmentation): the ceiling the loop can reach
  ratio      loop / data-free: 0.8 or more means the data path never limits training
  eval       `predict`'s images/s on the validation set (gpu_hours' evaluation speed-up)
  peak       torch.cuda.max_memory_allocated while training (resident images included)
  syncs      host waits per training step (torch.cuda.set_sync_debug_mode), by source line
then the paper preset's GPU-hours and wall-clock from the measured rates (bench/gpu_hours.py).
The data: the real Kermany training set through the decoded cache where ../shared/data/chest_xray
(or --data-root) exists, else the synthetic phantoms; the header says which.

Without a GPU it runs on the CPU at small sizes (header "no GPU: CPU figures"), so CI runs it:

    python bench/gpu_check.py                       # GPU: 224 px, both models, all of Kermany train
    python bench/gpu_check.py --compile             # also torch.compile'd (adds its compile time)
    python bench/gpu_check.py --quick --synthetic   # a seconds-long smoke run (tests/test_device_path.py)
    python bench/gpu_check.py --models densenet --share 1,2,4   # several trials per GPU: summed img/s
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import gpu_hours
import numpy as np
import torch
import torch.nn.functional as F

from pneumo_ray.config.data import DataSpec
from pneumo_ray.config.train import COMPILE_MODES
from pneumo_ray.data.study_data import ImageSet, load_study_data
from pneumo_ray.train.augment import Augment
from pneumo_ray.train.device_data import on_device
from pneumo_ray.train.loop import (
    Phase,
    class_weights,
    compiled,
    make_optimizer,
    normalizer_for,
    pick_device,
    predict,
    train_one_epoch,
)
from pneumo_ray.train.models import build_model

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "chest_xray"
TARGET_RATIO = 0.8
# (image size, training images, epochs) per mode; None = the whole training set
SIZES = {"gpu": (224, None, 3), "cpu": (64, 128, 2), "quick": (32, 32, 2)}
QUICK_BATCH = 16


def load_sets(args: argparse.Namespace) -> tuple[ImageSet, ImageSet, str]:
    """(train, val, what they are) at args.image_size, trimmed to args.max_images."""
    real = not args.synthetic and Path(args.data_root).is_dir()
    spec = DataSpec(
        data_root=str(args.data_root) if real else None,
        image_size=args.image_size,
        use_pretrain=False,
        cache_dir=args.cache_dir,
    )
    t0 = time.time()
    data = load_study_data(spec, quiet=True, log=None)
    train, val = data.train, data.val
    if args.max_images:  # a seeded sample: the sets are in manifest order (one class, then the other)
        rng = np.random.default_rng(0)
        pick = lambda s, n: s.subset(np.sort(rng.choice(len(s), min(n, len(s)), replace=False)), s.name)  # noqa: E731
        train, val = pick(train, args.max_images), pick(val, max(args.max_images // 4, 16))
    what = (
        f"real Kermany train from {Path(args.data_root).resolve()} via the decoded cache"
        if real
        else f"synthetic phantoms ({'--synthetic' if args.synthetic else f'no {args.data_root}'})"
    )
    return train, val, f"{what}: {len(train)} train + {len(val)} val images ({time.time() - t0:.1f} s to open)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else math.nan


def loop_rates(model_name: str, train: ImageSet, val: ImageSet, args: argparse.Namespace, device: torch.device) -> dict:
    """The project's loop on the data: images/s per epoch, evaluation images/s, peak memory, syncs."""
    torch.manual_seed(0)
    _peak_reset(device)
    model = build_model(model_name).to(device)
    cuda = device.type == "cuda"
    if cuda:
        model.to(memory_format=torch.channels_last)
    phase = Phase(name="check", epochs=args.epochs, lr=1e-3, batch_size=args.batch_size, aug_strength=0.5)
    steps = math.ceil(len(train) / args.batch_size)
    optimizer, scheduler = make_optimizer(model, phase, steps * (args.epochs + 1))
    t0 = time.time()
    train_data, val_data = on_device(train, device), on_device(val, device)
    _sync(device)
    upload_s = time.time() - t0
    forward = compiled(model, args.compile)
    kw = dict(
        augment=Augment(phase.aug_strength),
        normalize=normalizer_for(train),
        weights=class_weights(train.labels),
        device=device,
        batch_size=args.batch_size,
        seed=0,
        forward=forward,
    )
    epochs = [
        train_one_epoch(model, train_data, optimizer, scheduler, epoch=e, **kw) for e in range(1, args.epochs + 1)
    ]
    rates = [r["train_images_per_s"] for r in epochs]
    peak = _peak_gib(device)
    t0 = time.time()
    predict(model, val_data, normalize=kw["normalize"], device=device)
    _sync(device)
    eval_rate = len(val) / max(time.time() - t0, 1e-9)
    syncs = None
    if cuda:  # one more epoch, counting the host's waits for the device
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                train_one_epoch(model, train_data, optimizer, scheduler, epoch=args.epochs + 1, **kw)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        where = Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message))
        syncs = dict(per_step=sum(where.values()) / steps, sources=dict(where.most_common(6)))
    return dict(
        epoch_rates=rates,
        rate=statistics.mean(rates[1:] or rates),  # the first epoch pays cudnn's and compile's start-up
        first_epoch_s=epochs[0]["train_seconds"],
        eval_rate=eval_rate,
        upload_s=upload_s,
        peak_gib=peak,
        syncs=syncs,
        resident=type(train_data).__name__ == "ResidentSet",
    )


def data_free_rate(model_name: str, args: argparse.Namespace, device: torch.device, steps: int) -> dict:
    """The same training step on one batch already on the device: the rate without any data path."""
    torch.manual_seed(0)
    _peak_reset(device)
    cuda = device.type == "cuda"
    model = build_model(model_name).to(device)
    fmt = torch.channels_last if cuda else torch.contiguous_format
    model.to(memory_format=fmt)
    forward = compiled(model, args.compile)
    phase = Phase(name="check", epochs=1, lr=1e-3, batch_size=args.batch_size)
    optimizer, scheduler = make_optimizer(model, phase, 2 * steps)
    b, s = args.batch_size, args.image_size
    x = torch.randn(b, 1, s, s, device=device).contiguous(memory_format=fmt)
    y = (torch.arange(b, device=device) % 2).float()
    w = torch.where(y > 0.5, 1.0, 2.0)
    total = torch.zeros((), dtype=torch.float64, device=device)

    def step() -> None:
        nonlocal total
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            logits = forward(x)
        loss = (F.binary_cross_entropy_with_logits(logits.float(), y, reduction="none") * w).sum() / w.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.detach().double() * b

    model.train()
    for _ in range(min(steps, 10)):  # warm-up: cudnn's choices, the allocator, compile
        step()
    _sync(device)
    t0 = time.time()
    for _ in range(steps):
        step()
    total.item()
    seconds = time.time() - t0
    return dict(rate=steps * b / seconds, peak_gib=_peak_gib(device))


def shared_rates(model: str, args: argparse.Namespace) -> dict:
    """{N: summed images/s} of N processes training `model` at once on the one device, each through the
    loop as above (its first epoch left out); they start together and do the same work, so their
    measured epochs overlap."""
    import subprocess
    import tempfile

    same = ["--models", model, "--loop-only", "--device", args.device, "--image-size", str(args.image_size)]
    same += ["--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--max-images", str(args.max_images)]
    same += ["--data-root", str(args.data_root)] + (["--synthetic"] if args.synthetic else [])
    same += (["--cache-dir", args.cache_dir] if args.cache_dir else []) + (
        ["--compile", args.compile] if args.compile else []
    )
    same += ["--threads", str(args.threads)] if args.threads else []
    out = {}
    for n in [int(x) for x in args.share.split(",") if x.strip()]:
        with tempfile.TemporaryDirectory() as tmp:
            procs = [subprocess.Popen([sys.executable, __file__, *same, "--json", f"{tmp}/{i}.json"]) for i in range(n)]
            if any(p.wait() != 0 for p in procs):
                print(f"          --share {n}: a process failed", flush=True)
                continue
            each = [json.loads(Path(f"{tmp}/{i}.json").read_text())["results"][model]["loop"]["rate"] for i in range(n)]
        out[n] = dict(total=sum(each), each=each)
        print(
            f"{model:<9} {n} process(es) on one device: {sum(each):8.0f} img/s in all "
            f"({', '.join(f'{r:.0f}' for r in each)})",
            flush=True,
        )
    return out


def header(device: torch.device, args: argparse.Namespace) -> str:
    amp = "bf16 autocast, channels-last" if device.type == "cuda" else "float32"
    size = f"batch {args.batch_size}, {args.image_size} px, {args.epochs} epochs (first one excluded)"
    if args.compile:
        size += f", torch.compile {args.compile}"
    if device.type != "cuda":
        return f"no GPU: CPU figures ({torch.get_num_threads()} threads, {amp}, {size}; a smoke run, not GPU rates)"
    name = torch.cuda.get_device_name(device)
    return f"GPU: {name} (torch {torch.__version__}, CUDA {torch.version.cuda}), {amp}, {size}"


def _line(model: str, r: dict) -> str:
    syncs = r["loop"]["syncs"]
    sync_txt = "n/a on CPU" if syncs is None else f"{syncs['per_step']:.1f}/step"
    peak = "" if math.isnan(r["loop"]["peak_gib"]) else f"  peak {r['loop']['peak_gib']:.2f} GiB"
    return (
        f"{model:<9} loop {r['loop']['rate']:8.0f} img/s  data-free {r['data_free']['rate']:8.0f} img/s  "
        f"ratio {r['ratio']:.2f} ({'ok' if r['ratio'] >= TARGET_RATIO else 'BELOW'} {TARGET_RATIO})  "
        f"eval {r['loop']['eval_rate']:8.0f} img/s{peak}  host syncs {sync_txt}  "
        f"(first epoch {r['loop']['first_epoch_s']:.1f} s, upload {r['loop']['upload_s']:.2f} s)"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python bench/gpu_check.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--models", default="cnn,densenet", help="comma-separated (default: %(default)s)")
    p.add_argument("--image-size", type=int, help="default 224 on a GPU, 64 on the CPU, 32 with --quick")
    p.add_argument("--max-images", type=int, help="training images (default: all on a GPU, 128 on the CPU)")
    p.add_argument("--epochs", type=int, help="training epochs per model; the first is not counted")
    p.add_argument("--batch-size", type=int, help=f"default 32 ({QUICK_BATCH} with --quick)")
    p.add_argument("--data-root", default=str(DEFAULT_DATA), help="Kaggle chest_xray/ (default: ../shared/data)")
    p.add_argument("--synthetic", action="store_true", help="use the synthetic phantoms even where real data is")
    p.add_argument("--cache-dir", help="decoded-image cache (default: $PNEUMO_RAY_CACHE or ~/.cache/pneumo_ray)")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument(
        "--compile",
        nargs="?",
        const="default",
        choices=COMPILE_MODES,
        metavar="MODE",
        help="train through torch.compile (MODE: default, reduce-overhead = CUDA graphs, max-autotune); its "
        "compile time falls in the first epoch, which the rates leave out",
    )
    p.add_argument("--quick", action="store_true", help="tiny CPU-sized run (seconds), to keep this script working")
    p.add_argument(
        "--threads",
        type=int,
        help="CPU threads for torch (default: torch's on a GPU machine, else 1: on a busy 2-core machine, 2 OpenMP "
        "threads made DenseNet's first epoch 200 times slower than 1 thread did)",
    )
    p.add_argument(
        "--share",
        help="also N[,N...] processes training the same model at once on the one device (what Ray's fractional "
        "--gpus-per-trial 1/N does): their summed images/s, e.g. --share 1,2,4",
    )
    p.add_argument("--loop-only", action="store_true", help=argparse.SUPPRESS)  # a --share process
    p.add_argument("--gpus", type=int, default=4, help="cluster GPUs for gpu_hours' wall-clock (default 4)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    device = pick_device(args.device)
    mode = "quick" if args.quick else ("gpu" if device.type == "cuda" else "cpu")
    size, max_images, epochs = SIZES[mode]
    args.image_size = args.image_size or size
    args.max_images = args.max_images if args.max_images is not None else max_images
    args.epochs = args.epochs or epochs
    args.batch_size = args.batch_size or (QUICK_BATCH if args.quick else 32)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads or (threads if device.type == "cuda" else 1))
    try:
        return run(args, device, models)
    finally:
        torch.set_num_threads(threads)  # main() may run inside another program (the test)


def run(args: argparse.Namespace, device: torch.device, models: list[str]) -> int:
    t_start = time.time()
    say = (lambda *a, **k: None) if args.loop_only else print  # a --share process reports in its JSON only
    say(header(device, args), flush=True)
    train, val, what = load_sets(args)
    say(f"data: {what}", flush=True)
    results = {}
    for model in models:
        loop = loop_rates(model, train, val, args, device)
        if args.loop_only:
            results[model] = dict(loop=loop)
            continue
        steps = math.ceil(len(train) / args.batch_size)
        free = data_free_rate(model, args, device, steps)
        results[model] = dict(loop=loop, data_free=free, ratio=loop["rate"] / free["rate"])
        print(_line(model, results[model]), flush=True)
        if loop["syncs"] and loop["syncs"]["sources"]:
            print(f"          host syncs by source: {loop['syncs']['sources']}", flush=True)
    if args.loop_only:
        Path(args.json).write_text(json.dumps(dict(results=results), default=str))
        return 0
    if args.share:
        for model in models:
            results[model]["share"] = shared_rates(model, args)

    rates = {m: r["loop"]["rate"] for m, r in results.items()}
    speedup = min(r["loop"]["eval_rate"] / r["loop"]["rate"] for r in results.values())
    note = "" if device.type == "cuda" else f" (CPU rates at {args.image_size} px: exercises the sum, no GPU estimate)"
    try:
        cfg, rows = gpu_hours.estimate_from_rates(rates, eval_speedup=speedup, gpus=args.gpus)
    except ValueError as e:
        print(f"\npaper preset: {e}")
        rows = []
    else:
        print(
            f"\npaper preset at the measured loop rates, evaluation x{speedup:.1f} (the smaller measured), "
            f"start-up {gpu_hours.ASSUMED_STARTUP_S:g} s/job (assumed){note}:"
        )
        print("\n".join(gpu_hours.table_lines(cfg, rows)))
    print(f"\n{time.time() - t_start:.0f} s in all", flush=True)
    if args.json:
        out = dict(
            header=header(device, args), data=what, results=results, gpu_hours=rows, seconds=time.time() - t_start
        )
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
