"""What trained weights depend on besides their configuration and data: the machine conditions.

Measured on the real data (CNN, 64 px; bench/determinism.py): on the CPU, the same seed gives the
same weights bit for bit only under the same torch thread count, CPU kernels (AVX2 instead of AVX512:
test AUC 2e-3 apart after 2 + 2 epochs), augmentation implementation (OpenCV instead of the C kernel:
7e-4), and, by construction, torch version and training code. The thread count matters because
oneDNN splits a convolution's weight-gradient sum over the threads (gradients differ by ~3e-7 between
1 and 2 threads after one step, and the runs drift apart from there: test AUC 1.1e-3); the fused
augmentation kernel and the evaluation's forward pass do not depend on it (bit-identical at 1 to 8
threads). Neither running two trainings at once nor stopping and resuming a phase (same threads)
changes a bit, nor did the code between b9dffa1 (the README's first real-data table) and now.

`training_conditions(device, world)` records all of that as one JSON-able dict: the content address
of a stored pre-training holds it (protocol.pretrain_key), each store entry keeps it in its metadata,
and every result row repeats it, so that a number is never reused or compared across conditions
without it being visible.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
from pathlib import Path

import numpy as np
import torch

from pneumo_ray.train import fastwarp

PACKAGE = Path(__file__).resolve().parents[1]
# the code that turns (configuration, images) into weights: reading and decoding the images, the
# split and the leakage exclusions, the model, augmentation, loop and protocol (a new module there
# counts too); not the bookkeeping around it, whose edits change no number
TRAINING_CODE = ("config/train.py", "data/*.py", "train/*.py", "train/_warp.c")
BOOKKEEPING = ("train/conditions.py", "train/store.py", "train/reproduce.py")


@functools.cache
def training_code_digest() -> str:
    """SHA-256 (16 hex digits) over the training code's files (paths and bytes, in sorted order):
    an edit to any of them changes it, a commit that leaves them alone (README, tests) does not."""
    h = hashlib.sha256()
    files = sorted({p for pattern in TRAINING_CODE for p in PACKAGE.glob(pattern)} - {PACKAGE / b for b in BOOKKEEPING})
    for path in files:
        h.update(path.relative_to(PACKAGE).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


@functools.cache
def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else what the platform says): oneDNN picks its
    kernels and blocking by CPU, so two CPU models can round a convolution differently."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def augmentation_path(device: torch.device) -> str:
    """Which implementation augments this process's batches: the fused C kernel, OpenCV (no compiler,
    or PNEUMO_RAY_NO_FASTWARP=1) on the CPU, torch's grid_sample on a GPU."""
    if device.type != "cpu":
        return "torch"
    return "c-kernel" if fastwarp.kernel() is not None else "opencv"


def training_conditions(device: torch.device, world: int = 1) -> dict:
    """The conditions this process trains under on `device`, with `world` DDP workers.

    On the CPU: torch's thread count, the CPU model, the kernel family ATen dispatches to (AVX512, AVX2,
    ...) and a cap put on oneDNN's (ONEDNN_MAX_CPU_ISA).
    On a GPU: its name and the CUDA/cuDNN versions (the thread count does not touch the numbers there;
    GPU kernels are not bit-reproducible anyway, so the same conditions promise agreement, not bits)."""
    cond = dict(
        torch=torch.__version__,
        numpy=np.__version__,
        machine=platform.machine(),
        device=device.type,
        gpu=None,
        threads=None,
        cpu=None,
        cpu_capability=None,
        onednn_max_isa=None,
        world=int(world),
        augment=augmentation_path(device),
        code=training_code_digest(),
    )
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        name = torch.cuda.get_device_name(index)
        cond.update(gpu=name, cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    else:
        cond.update(
            threads=torch.get_num_threads(),
            cpu=cpu_model(),
            cpu_capability=torch.backends.cpu.get_cpu_capability(),
            onednn_max_isa=os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA"),
        )
    return cond


def differences(recorded: dict | None, current: dict) -> dict[str, tuple]:
    """{condition: (recorded, current)} for every condition that differs; an entry without recorded
    conditions (made before they were recorded) differs in all of them."""
    recorded = recorded or {}
    return {k: (recorded.get(k), v) for k, v in current.items() if recorded.get(k) != v}


def describe(diff: dict[str, tuple]) -> str:
    """'threads 2 → 1, code 1a2b… → 3c4d…' for the output of `differences`."""
    return ", ".join(f"{k} {a} → {b}" for k, (a, b) in diff.items())
