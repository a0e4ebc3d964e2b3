"""Data-pipeline benchmark: decoded cache + batched tensor augmentation vs. torchvision ImageFolder +
per-image PIL transforms in a DataLoader, same real images, same size, same augmentation strength,
same machine, one run. Also measures the shallow CNN's own training speed at each size, since the
data pipeline must never be what limits training.

    python bench/data_pipeline.py [--data-root ../shared/data/chest_xray] [--sizes 64 224] [--n 1024]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pneumo_ray.data import (
    cache,  # noqa: E402  # noqa: E402
    sources,  # noqa: E402
)
from pneumo_ray.data.study_data import ImageSet  # noqa: E402
from pneumo_ray.train import fastwarp  # noqa: E402
from pneumo_ray.train.augment import FULL, Augment, Normalize, to_float  # noqa: E402
from pneumo_ray.train.loop import Phase, epoch_order, fit  # noqa: E402
from pneumo_ray.train.models import build_model  # noqa: E402

STRENGTH = 0.5


def imagefolder_rate(root: Path, names: set[str], size: int, batch: int, workers: int) -> float:
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
    t0, n = time.perf_counter(), 0
    for x, _ in loader:
        n += len(x)
    return n / (time.perf_counter() - t0)


def cached_rate(data: ImageSet, batch: int, epochs: int = 3, fast: bool = True) -> float:
    """Our path: uint8 memory map → batch tensor → batched affine + photometric → normalize.
    fast=False forces torch's grid_sample path instead of the fused C kernel (for comparison)."""
    saved = os.environ.get("PNEUMO_RAY_NO_FASTWARP")
    os.environ["PNEUMO_RAY_NO_FASTWARP"] = "0" if fast else "1"
    try:
        return _cached_rate(data, batch, epochs)
    finally:
        if saved is None:
            del os.environ["PNEUMO_RAY_NO_FASTWARP"]
        else:
            os.environ["PNEUMO_RAY_NO_FASTWARP"] = saved


def _cached_rate(data: ImageSet, batch: int, epochs: int) -> float:
    aug, norm = Augment(STRENGTH), Normalize(0.5, 0.25)
    gen = torch.Generator().manual_seed(0)
    aug(to_float(torch.from_numpy(data.batch(np.arange(batch)))), gen, norm)  # warm-up (thread pool)
    t0, n = time.perf_counter(), 0
    for epoch in range(epochs):
        for rows in epoch_order(len(data), batch, seed=0, epoch=epoch):
            x = aug(to_float(torch.from_numpy(data.batch(rows))), gen, norm)
            n += len(x)
    return n / (time.perf_counter() - t0)


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
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="DataLoader workers for the baseline")
    p.add_argument("--train-n", type=int, default=256, help="images for the CNN training-speed measurement")
    args = p.parse_args(argv)
    root = Path(args.data_root)
    if not root.is_dir():
        print(f"error: {root} not found; pass --data-root (a Kaggle chest_xray/ folder)", file=sys.stderr)
        return 2
    m = sources.kermany_manifest(root).manifest
    m = m[m.split == "train"].sample(n=min(args.n, (m.split == "train").sum()), random_state=0)
    train_root = Path(m["path"].iloc[0]).parents[1]
    kernel = "fused C kernel" if fastwarp.kernel() is not None else "torch grid_sample (C kernel unavailable)"
    print(
        f"{len(m)} real images from {train_root}; batch {args.batch_size}; augmentation strength {STRENGTH}; "
        f"{torch.get_num_threads()} torch threads; baseline DataLoader workers {args.workers}; "
        f"cache+batched augments with: {kernel}"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            t0 = time.perf_counter()
            dec = cache.decoded(m, size, tmp, quiet=True)
            build = time.perf_counter() - t0
            data = ImageSet(dec.images, np.arange(len(dec.manifest)), dec.manifest, "bench")
            base = imagefolder_rate(train_root, set(m["name"]), size, args.batch_size, args.workers)
            ours = cached_rate(data, args.batch_size)
            torch_path = cached_rate(data, args.batch_size, fast=False)
            train = training_rate(data, args.train_n)
            rows.append((size, build, base, ours, torch_path, train))
            print(
                f"  {size:3d} px: cache build (once) {len(m) / build:7.0f} img/s | ImageFolder+PIL {base:7.0f} img/s | "
                f"cache+batched {ours:7.0f} img/s | ratio {ours / base:5.1f}x | (torch path {torch_path:7.0f} img/s, "
                f"{torch_path / base:4.1f}x) | CNN training {train:6.0f} img/s | "
                f"pipeline/training {ours / train:5.1f}x",
                flush=True,
            )
    print(
        "\nsize  baseline_img_s  cached_img_s  speedup  torch_path_img_s  torch_path_speedup  cnn_train_img_s  "
        "pipeline_over_training"
    )
    for size, _, base, ours, torch_path, train in rows:
        print(
            f"{size:4d}  {base:14.0f}  {ours:12.0f}  {ours / base:6.1f}x  {torch_path:16.0f}  "
            f"{torch_path / base:17.1f}x  {train:15.0f}  {ours / train:21.1f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
