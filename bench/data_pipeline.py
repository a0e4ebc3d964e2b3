"""Data-pipeline benchmark: decoded cache + batched tensor augmentation vs. torchvision ImageFolder +
per-image PIL transforms in a DataLoader, same real images, same size, same augmentation strength,
same machine, one run. Also measures the shallow CNN's own training speed at each size, since the
data pipeline must never be what limits training.

The cached pipeline is timed with each CPU augmentation path: the fused C kernel (what Augment
uses where gcc is), OpenCV (what it uses without gcc), torch's grid_sample (the definition; what a
GPU runs), and OpenCV with its own threads (Augment sets them to 1). The paths run in
interleaved rounds over the same images with the same random draws, so that each meets a busy
machine alike; each figure is the best round (the least disturbed; the median is printed too),
also counted per CPU-second of this process (what a core delivers, whatever else the machine runs).
Bars: the cached pipeline is at least 5x ImageFolder at every size; OpenCV would replace the
kernel at 80 % of its rate at every size. The photometric augmentation (`--photometric`, plain
torch before the warp) is timed in the same rounds in front of the kernel: its cost is the ratio.

    python bench/data_pipeline.py [--data-root ../shared/data/chest_xray] [--sizes 64 224] [--n 1024]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pneumo_ray.data import cache, sources  # noqa: E402
from pneumo_ray.data.study_data import ImageSet  # noqa: E402
from pneumo_ray.train import fastwarp  # noqa: E402
from pneumo_ray.train.augment import (  # noqa: E402
    FULL,
    Augment,
    Normalize,
    augment_opencv,
    augment_torch,
    to_float,
)
from pneumo_ray.train.loop import Phase, epoch_order, fit  # noqa: E402
from pneumo_ray.train.models import build_model  # noqa: E402
from pneumo_ray.train.photometric import Photometric  # noqa: E402

STRENGTH = 0.5
BAR = 5.0  # the cached pipeline must be at least this many times ImageFolder's rate, at every size
KEEP_KERNEL = 0.8  # OpenCV replaces the C kernel if it reaches this share of the kernel's rate at every size


def _opencv_own_threads(x, theta, contrast, brightness, mu, sd):
    """The alternative to Augment's setting (cv2.setNumThreads(1)): OpenCV splitting each warp over
    as many threads of its own as torch has."""
    cv2.setNumThreads(torch.get_num_threads())
    try:
        return augment_opencv(x, theta, contrast, brightness, mu, sd)
    finally:
        cv2.setNumThreads(1)


def _photometric_then_kernel(x, theta, contrast, brightness, mu, sd):
    """What training runs with --photometric 0.5: the photometric step (its own draws), then the kernel."""
    x = Photometric(0.5)(x, torch.Generator().manual_seed(len(x)))
    return fastwarp.augment(x, theta, contrast, brightness, mu, sd)


PATHS = {
    "opencv": augment_opencv,
    "torch": augment_torch,
    "kernel": fastwarp.augment,
    "opencv_own_threads": _opencv_own_threads,
    "kernel+photometric": _photometric_then_kernel,
}


def imagefolder_rate(root: Path, names: set[str], size: int, batch: int, workers: int, epochs: int = 3) -> float:
    """torchvision's usual recipe: decode + transform each image in DataLoader worker processes."""
    from torchvision import datasets
    from torchvision import transforms as T

    s = STRENGTH
    tf = T.Compose(
        [
            T.Grayscale(1),
            T.Resize((size, size)),
            T.RandomAffine(
                degrees=FULL["rotation_deg"] * s,
                translate=(FULL["shift"] * s,) * 2,
                scale=(1 - FULL["zoom"] * s, 1 + FULL["zoom"] * s),
                shear=np.degrees(FULL["shear"] * s),
            ),
            T.ColorJitter(brightness=FULL["brightness"] * s, contrast=FULL["contrast"] * s),
            T.ToTensor(),
            T.Normalize([0.5], [0.25]),
        ]
    )
    ds = datasets.ImageFolder(str(root), transform=tf, is_valid_file=lambda p: Path(p).name in names)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch, shuffle=True, num_workers=workers, persistent_workers=workers > 0
    )
    for _ in loader:  # warm-up epoch: worker start-up and the page cache are not what we measure
        pass
    rates = []
    for _ in range(epochs):  # the best epoch, as for the cached paths
        t0, n = time.perf_counter(), 0
        for x, _ in loader:
            n += len(x)
        rates.append(n / (time.perf_counter() - t0))
    return max(rates)


def cached_epoch_rate(data: ImageSet, batch: int, path: str, epoch: int) -> tuple[float, float]:
    """Our pipeline, one epoch: uint8 memory map → batch tensor → augmentation + normalization with
    `path`; the draws depend on the epoch only, so every path warps the same images the same way.
    Returns images per second and images per CPU-second of this process (all its threads)."""
    aug, norm = Augment(STRENGTH), Normalize(0.5, 0.25)
    gen = torch.Generator().manual_seed(epoch)
    t0, c0, n = time.perf_counter(), time.process_time(), 0
    for rows in epoch_order(len(data), batch, seed=0, epoch=epoch):
        x = to_float(torch.from_numpy(data.batch(rows)))
        theta, contrast, brightness = aug.draw(len(x), gen, x.device, x.dtype)
        out = PATHS[path](x, theta, contrast, brightness, norm.mean, norm.std)
        n += len(out)
    return n / (time.perf_counter() - t0), n / (time.process_time() - c0)


def cached_rates(data: ImageSet, batch: int, paths: list[str], rounds: int) -> dict[str, list[tuple[float, float]]]:
    """Each path's (img/s, img/CPU-s) in `rounds` interleaved rounds (after one warm-up round)."""
    rates: dict[str, list[tuple[float, float]]] = {p: [] for p in paths}
    for r in range(rounds + 1):
        for p in paths:
            rate = cached_epoch_rate(data, batch, p, epoch=r)
            if r:
                rates[p].append(rate)
    return rates


def training_rate(data: ImageSet, n: int) -> float:
    torch.manual_seed(0)
    sub = data.subset(np.arange(min(n, len(data))))
    fit(
        build_model("cnn"),
        sub,
        None,
        Phase(name="bench", epochs=1, lr=1e-3, aug_strength=0.0),
        device=torch.device("cpu"),
        progress=False,
        log=None,
    )  # warm-up
    r = fit(
        build_model("cnn"),
        sub,
        None,
        Phase(name="bench", epochs=1, lr=1e-3, aug_strength=STRENGTH),
        device=torch.device("cpu"),
        progress=False,
        log=None,
    )
    return r.history[0]["train_images_per_s"]


def main(argv=None) -> int:
    default_root = Path(__file__).resolve().parents[2] / "shared" / "data" / "chest_xray"
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=str(default_root), help="a Kaggle chest_xray/ folder")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    p.add_argument("--n", type=int, default=1024, help="images per measurement (from train/)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=25, help="interleaved rounds per augmentation path (best)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="DataLoader workers for the baseline")
    p.add_argument("--train-n", type=int, default=256, help="images for the CNN training-speed measurement")
    p.add_argument("--threads", type=int, help="torch threads (the trainer: one process per core, 1 each)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(args.data_root)
    if not root.is_dir():
        print(f"error: {root} not found; pass --data-root (a Kaggle chest_xray/ folder)", file=sys.stderr)
        return 2
    m = sources.kermany_manifest(root).manifest
    m = m[m.split == "train"].sample(n=min(args.n, (m.split == "train").sum()), random_state=0)
    train_root = Path(m["path"].iloc[0]).parents[1]
    paths = [p for p in PATHS if not p.startswith("kernel") or fastwarp.kernel() is not None]
    if torch.get_num_threads() == 1:  # OpenCV's own threads would be Augment's setting, 1
        paths.remove("opencv_own_threads")
    print(
        f"{len(m)} real images from {train_root}; batch {args.batch_size}; augmentation strength {STRENGTH}; "
        f"{torch.get_num_threads()} torch threads; baseline DataLoader workers {args.workers}; "
        f"OpenCV {cv2.__version__}; cached pipeline: best img/s of {args.rounds} interleaved rounds per path"
    )
    rows, cpus = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            t0 = time.perf_counter()
            dec = cache.decoded(m, size, tmp, quiet=True)
            build = time.perf_counter() - t0
            data = ImageSet(dec.images, np.arange(len(dec.manifest)), dec.manifest, "bench")
            base = imagefolder_rate(train_root, set(m["name"]), size, args.batch_size, args.workers)
            rates = cached_rates(data, args.batch_size, paths, args.rounds)
            best = {p: max(wall for wall, _ in r) for p, r in rates.items()}
            cpu = {p: max(c for _, c in r) for p, r in rates.items()}
            train = training_rate(data, args.train_n)
            rows.append((size, base, best, train))
            cpus.append(cpu)
            spread = " | ".join(f"{p} {statistics.median(w for w, _ in r):.0f}" for p, r in rates.items())
            print(
                f"  {size:3d} px: cache build (once) {len(m) / build:7.0f} img/s | ImageFolder+PIL {base:7.0f} img/s | "
                f"CNN training {train:6.0f} img/s | median round img/s: {spread}",
                flush=True,
            )
    print(f"\nimg/s, best round   size  imagefolder  {'  '.join(f'{p:>18s}' for p in paths)}  cnn_train")
    for size, base, best, train in rows:
        print(f"{'':19s}  {size:4d}  {base:11.0f}  {'  '.join(f'{best[p]:18.0f}' for p in paths)}  {train:9.0f}")
    print(f"img per CPU-second  size  {'':11s}  {'  '.join(f'{p:>18s}' for p in paths)}")
    for (size, *_), cpu in zip(rows, cpus):
        print(f"{'':19s}  {size:4d}  {'':11s}  {'  '.join(f'{cpu[p]:18.0f}' for p in paths)}")
    for (size, base, best, train), cpu in zip(rows, cpus):
        line = (
            f"{size:3d} px: OpenCV {best['opencv']:.0f} img/s = {best['opencv'] / base:.1f}x ImageFolder, "
            f"{best['opencv'] / best['torch']:.2f}x torch grid_sample, {best['opencv'] / train:.0f}x CNN training"
        )
        if "opencv_own_threads" in best:
            own = best["opencv_own_threads"] / best["opencv"]
            line += f"; OpenCV with {torch.get_num_threads()} threads of its own instead of 1: {own:.2f}x"
        if "kernel" in best:
            line += f"; kernel {best['kernel']:.0f} img/s = {best['kernel'] / base:.1f}x ImageFolder"
            line += f"; OpenCV/kernel = {best['opencv'] / best['kernel']:.2f}"
            line += f" ({cpu['opencv'] / cpu['kernel']:.2f} per CPU-second)"
        print(line)
    if "kernel+photometric" in paths:
        for size, _, best, train in rows:
            both = best["kernel+photometric"]
            alone = 1 / (1 / both - 1 / best["kernel"])  # the photometric step's own rate
            print(
                f"{size:3d} px: photometric 0.5 before the kernel: {both:.0f} img/s = {both / best['kernel']:.2f}x the "
                f"kernel alone; the step itself {alone:.0f} img/s = {alone / train:.0f}x CNN training"
            )
    for p in [p for p in ("kernel", "opencv") if p in paths]:
        ok = all(best[p] >= BAR * base for _, base, best, _ in rows)
        print(f"cached pipeline with {p} >= {BAR:.0f}x ImageFolder at every size: {'yes' if ok else 'NO'}")
    if "kernel" in paths:
        wins = all(best["opencv"] >= KEEP_KERNEL * best["kernel"] for _, _, best, _ in rows)
        verdict = "use OpenCV, delete the kernel" if wins else "keep the kernel (OpenCV where there is no gcc)"
        print(
            f"decision: OpenCV {'reaches' if wins else 'does NOT reach'} {KEEP_KERNEL:.0%} of the C kernel's img/s "
            f"at every size -> {verdict}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
