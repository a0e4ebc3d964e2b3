"""The fused C kernel of `_warp.c` (affine warp + bilinear + photometric + normalization in one
pass over CPU float32 batches), compiled on first use and loaded with ctypes.

The shared library goes to `<cache dir>/fastwarp/warp-<hash>.so`, the hash covering the C source,
the compiler flags and the machine type, so an edited kernel or a different CPU family gets its
own file. It is compiled to a temporary name and renamed, so processes that start together never
load a half-written library. Flags are portable (no -march=native): a shared cache may serve
cluster nodes with different CPUs. No gcc, a failed compile or PNEUMO_RAY_NO_FASTWARP=1 → `kernel()`
is None and Augment keeps its torch path (the first two with one warning).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import uuid
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("_warp.c")
FLAGS = ["-O3", "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC"]
log = logging.getLogger(__name__)
_kernel: ctypes.CDLL | None = None
_failed = False


def disabled() -> bool:
    return os.environ.get("PNEUMO_RAY_NO_FASTWARP", "") not in ("", "0")


def library_path(cache_dir: Path | None = None) -> Path:
    from pneumo_ray.data.cache import default_cache_dir

    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS + [platform.machine()]).encode()).hexdigest()[:16]
    return Path(cache_dir or default_cache_dir()) / "fastwarp" / f"warp-{key}.so"


def build(path: Path) -> Path:
    """Compile _warp.c to `path` (atomically), unless it is there already."""
    if path.exists():
        return path
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise RuntimeError("no C compiler (gcc) on PATH")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        r = subprocess.run([cc, *FLAGS, str(SOURCE), "-o", str(tmp)], capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise RuntimeError(f"{cc} failed: {r.stderr.strip()[-2000:]}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def kernel() -> ctypes.CDLL | None:
    """The loaded library, or None (use the torch path). Compiles once per process at most."""
    global _kernel, _failed
    if disabled():
        return None
    if _kernel is None and not _failed:
        try:
            lib = ctypes.CDLL(str(build(library_path())))
            f, p = ctypes.c_float, ctypes.c_void_p
            lib.augment_f32.argtypes = [p, p, ctypes.c_int, ctypes.c_int, ctypes.c_int, p, p, p, f, f, ctypes.c_int]
            lib.augment_f32.restype = ctypes.c_int
            _kernel = lib
        except Exception as e:  # noqa: BLE001 - any failure means: keep the (slower) torch path
            _failed = True
            log.warning("fast CPU augmentation kernel unavailable, using torch's grid_sample: %s", e)
    return _kernel


def usable(x: torch.Tensor) -> bool:
    """Whether `x` can take the C kernel: a [B, 1, H, W] float32 batch on the CPU, H and W at least 2."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.dim() == 4
        and x.shape[1] == 1
        and min(x.shape[2:]) >= 2
    )


def augment(
    x: torch.Tensor, theta: torch.Tensor, contrast: torch.Tensor, brightness: torch.Tensor, mu: float, sd: float
) -> torch.Tensor | None:
    """The kernel's result for `x` [B, 1, H, W], `theta` [B, 2, 3] and per-image contrast and
    brightness [B]; None when the kernel is unavailable."""
    lib = kernel()
    if lib is None:
        return None
    b, _, h, w = x.shape
    x = x.contiguous()
    theta, contrast, brightness = (t.to(torch.float32).contiguous() for t in (theta, contrast, brightness))
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    rc = lib.augment_f32(
        x.data_ptr(),
        out.data_ptr(),
        b,
        h,
        w,
        theta.data_ptr(),
        contrast.data_ptr(),
        brightness.data_ptr(),
        float(mu),
        float(sd),
        torch.get_num_threads(),
    )
    if rc != 0:
        raise MemoryError("fast augmentation kernel: out of memory")
    return out
