"""The fused C kernel of `_warp.c` (affine warp + bilinear + photometric + normalization in one
pass over CPU float32 batches), compiled on first use in each process and loaded with ctypes.

Security: the library is built into a fresh private directory (tempfile.mkdtemp: mode 0700, a
random name, created by this process) and loaded from there, then deleted; no library is ever
loaded from a path that existed before, so nothing planted in a shared cache folder (the old
`<cache>/fastwarp/warp-<hash>.so`) or elsewhere can run. The price is one compile per process
(about 0.2 s of CPU for gcc). Flags are portable (no -march=native). No gcc, a failed compile or
PNEUMO_RAY_NO_FASTWARP=1 → `kernel()` is None and Augment takes its OpenCV path (the first two
with one warning).
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("_warp.c")
FLAGS = ["-O3", "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC"]
log = logging.getLogger(__name__)
_kernel: ctypes.CDLL | None = None
_failed = False


def disabled() -> bool:
    return os.environ.get("PNEUMO_RAY_NO_FASTWARP", "") not in ("", "0")


def compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")


def load_private_build() -> ctypes.CDLL:
    """Compile _warp.c into a new private directory, load it, delete the directory."""
    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler (gcc) on PATH")
    private = Path(tempfile.mkdtemp(prefix="pneumo-ray-warp-"))  # 0700, a fresh name: only we write here
    try:
        lib_path = private / "warp.so"
        r = subprocess.run([cc, *FLAGS, str(SOURCE), "-o", str(lib_path)], capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise RuntimeError(f"{cc} failed: {r.stderr.strip()[-2000:]}")
        lib = ctypes.CDLL(str(lib_path))  # mapped now: the file may go
    finally:
        shutil.rmtree(private, ignore_errors=True)
    f, p = ctypes.c_float, ctypes.c_void_p
    lib.augment_f32.argtypes = [p, p, ctypes.c_int, ctypes.c_int, ctypes.c_int, p, p, p, f, f, ctypes.c_int]
    lib.augment_f32.restype = ctypes.c_int
    return lib


def kernel() -> ctypes.CDLL | None:
    """The loaded library, or None (use the OpenCV path). Compiles once per process at most (a
    forked child keeps its parent's library)."""
    global _kernel, _failed
    if disabled():
        return None
    if _kernel is None and not _failed:
        try:
            _kernel = load_private_build()
        except Exception as e:  # noqa: BLE001 - any failure means: keep the OpenCV path
            _failed = True
            log.warning("fast CPU augmentation kernel unavailable, using OpenCV's warpAffine: %s", e)
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
