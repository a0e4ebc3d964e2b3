"""Decoded-image cache: every image decoded once, at one size, to grayscale uint8 on disk.

The cache for a manifest is `<dir>/<key>.u8` (a raw [N, size, size] uint8 array, opened as a
read-only memory map, so processes on one machine share its pages) plus `<key>.json` (which
manifest rows it holds and which files could not be decoded, with the reason). The key hashes
size + each file's path, byte size and mtime: any change to the files makes a new cache.
Files are written to a temporary name and renamed, so a crash never leaves a half cache.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pneumo_ray.config.train import stable_id
from pneumo_ray.data.sources import Problem
from pneumo_ray.storage.atomic import atomic_write

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    return Path(os.environ.get("PNEUMO_RAY_CACHE", Path.home() / ".cache" / "pneumo_ray"))


@dataclass
class Decoded:
    """Images of the manifest rows that decoded, in manifest order."""

    images: np.ndarray  # [N, size, size] uint8 (memory map for file-backed data)
    manifest: pd.DataFrame  # the rows that decoded, index reset
    problems: list[Problem]  # rows that did not, with the reason
    key: str
    path: Path | None = None


def decode_image(path: str, size: int) -> np.ndarray:
    """One file → [size, size] uint8 grayscale (aspect ratio not kept, as Keras' target_size)."""
    from PIL import Image

    if os.path.getsize(path) == 0:
        raise ValueError("empty file (0 bytes)")
    with Image.open(path) as im:
        im.draft("L", (size, size))  # JPEG: decode at a reduced scale directly, much faster
        im = im.convert("L")
        if im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.BILINEAR)
        arr = np.asarray(im, dtype=np.uint8)
    return arr


def _decode_chunk(args):
    paths, size = args
    out = np.zeros((len(paths), size, size), np.uint8)
    errors = {}
    for i, p in enumerate(paths):
        try:
            out[i] = decode_image(p, size)
        except Exception as e:  # noqa: BLE001 - every failure is reported with its reason
            errors[i] = f"cannot decode image: {type(e).__name__}: {e}" if str(e) != "empty file (0 bytes)" else str(e)
    return out, errors


def cache_key(manifest: pd.DataFrame, size: int) -> str:
    def stat(p):
        try:
            s = os.stat(p)
            return [s.st_size, s.st_mtime_ns]
        except OSError:
            return None

    return stable_id(
        [CACHE_VERSION, int(size), [[p, int(label), stat(p)] for p, label in zip(manifest["path"], manifest["label"])]],
        20,
    )


class _Progress:
    """Live line on a terminal; in a log file only a line every 10 s and at the end."""

    def __init__(self, label: str, total: int):
        self.label, self.total, self.t0, self.last = label, total, time.time(), 0.0
        self.tty = sys.stderr.isatty()

    def __call__(self, done: int) -> None:
        now = time.time()
        if done < self.total and now - self.last < (0.5 if self.tty else 10.0):
            return
        self.last = now
        rate = done / max(now - self.t0, 1e-9)
        end = "\n" if (done == self.total or not self.tty) else ""
        start = chr(13) if self.tty else ""
        sys.stderr.write(f"{start}  decoding {self.label}: {done}/{self.total} images ({rate:.0f}/s){end}")
        sys.stderr.flush()


def decoded(
    manifest: pd.DataFrame,
    size: int,
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
    label: str = "images",
    quiet: bool = False,
) -> Decoded:
    """Decode (or reuse) the manifest's images at `size`; return the decodable rows + problems."""
    manifest = manifest.reset_index(drop=True)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(manifest, size)
    data_path, meta_path = cache_dir / f"{key}.u8", cache_dir / f"{key}.json"
    if not (data_path.exists() and meta_path.exists()):
        _build(manifest, size, data_path, meta_path, workers, label, quiet)
    meta = json.loads(meta_path.read_text())
    keep = np.asarray(meta["kept"], dtype=np.int64)
    images = (
        np.memmap(data_path, np.uint8, "r", shape=(len(keep), size, size))
        if len(keep)
        else np.zeros((0, size, size), np.uint8)
    )
    problems = [Problem(p, r) for p, r in meta["failed"]]
    return Decoded(images, manifest.iloc[keep].reset_index(drop=True), problems, key, data_path)


def _build(manifest, size, data_path, meta_path, workers, label, quiet) -> None:
    paths = manifest["path"].tolist()
    n = len(paths)
    workers = workers or min(os.cpu_count() or 1, 8)
    chunk = 64
    jobs = [(paths[i : i + chunk], size) for i in range(0, n, chunk)]
    kept, failed = [], []
    progress, t0 = _Progress(label, n), time.time()

    def stream(tmp: Path) -> None:
        done = 0
        with open(tmp, "wb") as f:
            pool = ProcessPoolExecutor(workers) if workers > 1 and n > chunk else None
            results = pool.map(_decode_chunk, jobs) if pool else map(_decode_chunk, jobs)
            for j, (arr, errors) in enumerate(results):
                base = j * chunk
                good = [i for i in range(len(arr)) if i not in errors]
                f.write(arr[good].tobytes())
                kept.extend(base + i for i in good)
                failed.extend([paths[base + i], why] for i, why in sorted(errors.items()))
                done += len(arr)
                if not quiet:
                    progress(done)
            if pool:
                pool.shutdown()

    atomic_write(data_path, stream)
    meta = dict(version=CACHE_VERSION, size=size, n=n, kept=kept, failed=failed, seconds=round(time.time() - t0, 2))
    atomic_write(meta_path, lambda p: p.write_text(json.dumps(meta)))


def cached_array(
    key: str,
    shape: tuple[int, ...],
    build: Callable[[], tuple[np.ndarray, dict]],
    cache_dir: str | os.PathLike | None = None,
) -> tuple[np.ndarray, dict]:
    """A generated uint8 array (and its JSON-able metadata) cached under `key`; `build()` returns
    (array, metadata) and runs only on a cache miss. Used for the synthetic phantoms."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    path, meta_path = cache_dir / f"{key}.u8", cache_dir / f"{key}.json"
    if not (path.exists() and meta_path.exists()):
        arr, meta = build()
        arr = np.ascontiguousarray(arr, dtype=np.uint8)
        if arr.shape != tuple(shape):
            raise ValueError(f"generated array has shape {arr.shape}, expected {shape}")
        atomic_write(path, lambda p: p.write_bytes(arr.tobytes()))
        atomic_write(meta_path, lambda p: p.write_text(json.dumps(meta)))
    return np.memmap(path, np.uint8, "r", shape=tuple(shape)), json.loads(meta_path.read_text())
