"""Batched augmentation + normalization on tensors, on whatever device the batch lives on.

One `strength` in [0, 1] scales the Keras ImageDataGenerator-style set that such studies use.
At strength 1: rotation ±15°, shifts ±10%, zoom ±15%, shear ±0.15, brightness ±0.15, contrast ×(1±0.25).
Strength 0 is exactly the identity. Horizontal flip is optional and off by default: chest X-rays
are not mirror-symmetric (the heart sits on the patient's left).

Every geometric transform of an image (flip included) is one affine map, and the photometric change
plus the normalization one multiply-add. Three implementations of that one computation, all fed the
same random draws (a seed gives the same numbers on the CPU):
- `augment_torch`, the definition: one `grid_sample` on one grid. CUDA and non-float32 batches.
- CPU float32, [B, 1, H, W]: the fused C kernel of fastwarp.py (compiled privately per process).
  It stays: with OpenCV the pipeline ran at 60 % of the kernel's rate at 64 px and 76 % at 224 px
  on one thread, 45 % and 44 % on two (bench/data_pipeline.py; the bar to replace it was 80 %).
- `augment_opencv`: the CPU path without a C compiler (or with PNEUMO_RAY_NO_FASTWARP=1):
  `cv2.warpAffine` per image with the same maps and sampling (bilinear, border pixels repeated,
  pixel centres as align_corners=False), the multiply-add while the image is still in cache.
  1.4x (64 px) to 3.1x (224 px) torch's grid_sample on one thread; equal to it within 1e-4.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from pneumo_ray.train import fastwarp

FULL = dict(rotation_deg=15.0, shift=0.10, zoom=0.15, shear=0.15, brightness=0.15, contrast=0.25)

# One thread: OpenCV's own threads split every warp into row stripes, which made the pipeline
# slower beside torch's 2 threads on 2 cores (0.59x at 64 px, 0.77x at 224 px; a Python thread
# pool over the images gained nothing either), and N threads in each of the trainer's one-per-core
# processes would oversubscribe the machine (bench/data_pipeline.py).
cv2.setNumThreads(1)
_WARP = (cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, cv2.BORDER_REPLICATE)  # flags, borderMode
_LARGE_BYTES = 32 << 10  # images above this (128 px and up) are pulled into cache before the warp


def to_float(batch_u8: torch.Tensor) -> torch.Tensor:
    """[B, H, W] or [B, 1, H, W] uint8 → [B, 1, H, W] float in [0, 1]."""
    x = batch_u8 if batch_u8.dim() == 4 else batch_u8.unsqueeze(1)
    return x.float().div_(255.0)


def _base_coords(h: int, w: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates in [-1, 1] (affine_grid's convention with align_corners=False)."""
    xs = (torch.arange(w, device=device, dtype=dtype) * 2 + 1) / w - 1
    ys = (torch.arange(h, device=device, dtype=dtype) * 2 + 1) / h - 1
    return xs, ys


def affine_grid(theta: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Same result as F.affine_grid(theta, [B, C, h, w], align_corners=False), several times faster
    on CPU: an affine map is separable into an x term and a y term, so broadcast them."""
    b = theta.shape[0]
    xs, ys = _base_coords(h, w, theta.device, theta.dtype)
    x_term = theta[:, :, 0].view(b, 1, 1, 2) * xs.view(1, 1, w, 1)
    y_term = theta[:, :, 1].view(b, 1, 1, 2) * ys.view(1, h, 1, 1) + theta[:, :, 2].view(b, 1, 1, 2)
    return x_term + y_term


def pixel_affine(theta: torch.Tensor, h: int, w: int) -> np.ndarray:
    """[B, 2, 3] output→input maps in grid units → the same maps in pixel units, float64, as
    cv2.warpAffine takes them with WARP_INVERSE_MAP. Per axis of n pixels, pixel p sits at grid
    g = (2p + 1)/n - 1 (align_corners=False), so p = (g + 1)·n/2 - 1/2."""
    t = theta.detach().to("cpu", torch.float64).numpy()
    half = np.array([w / 2, h / 2]).reshape(1, 2, 1)  # grid → pixel, per input axis (rows of t)
    linear = t[:, :, :2] * half * np.array([2 / w, 2 / h])  # pixel → grid, per output axis (columns)
    origin = t[:, :, :2] @ np.array([1 / w - 1, 1 / h - 1]) + t[:, :, 2]  # where output pixel (0, 0) samples
    return np.concatenate([linear, ((origin + 1) * half[..., 0] - 0.5)[..., None]], axis=2)


def in_one_copy(
    theta: torch.Tensor, contrast: torch.Tensor, brightness: torch.Tensor, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """theta [B, 2, 3], contrast and brightness [B] from the host on `device`, in one copy of one
    [B, 8] tensor (from pinned memory on CUDA, so the host does not wait); views of it are returned."""
    b = theta.shape[0]
    packed = torch.cat([theta.reshape(b, 6), contrast.view(b, 1), brightness.view(b, 1)], 1)
    if device.type == "cuda":
        packed = packed.pin_memory()
    packed = packed.to(device, non_blocking=True)
    return packed[:, :6].view(b, 2, 3), packed[:, 6], packed[:, 7]


@dataclass(frozen=True)
class Augment:
    strength: float = 0.5
    hflip: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"augmentation strength must be in [0, 1], got {self.strength}")

    def draw(
        self, b: int, generator: torch.Generator | None, device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Random parameters for `b` images: output→input affine maps theta [B, 2, 3] in grid units,
        contrast and brightness [B]. Drawn on the CPU generator and computed on the CPU in `dtype`
        (reproducible on any device), then moved to `device` in ONE copy, non-blocking from pinned
        memory on CUDA: seven small `.to(device)` copies each made the host wait for the GPU
        (7 syncs per training step on an H200)."""
        s = self.strength

        def u(scale):  # uniform in [-scale, scale]
            return ((torch.rand(b, generator=generator, dtype=torch.float64) * 2 - 1) * scale).to(dtype)

        angle = u(math.radians(FULL["rotation_deg"] * s))
        zoom = 1.0 + u(FULL["zoom"] * s)
        shear = u(FULL["shear"] * s)
        tx, ty = u(FULL["shift"] * 2 * s), u(FULL["shift"] * 2 * s)  # grid units span 2
        cos, sin = torch.cos(angle), torch.sin(angle)
        # output→input sampling: rotation · shear, divided by zoom (zoom > 1 magnifies), then shift
        theta = torch.stack(
            [torch.stack([cos, -sin + shear * cos, tx], 1), torch.stack([sin, cos + shear * sin, ty], 1)], 1
        )
        theta[:, :, :2] /= zoom.view(b, 1, 1)
        if self.hflip:  # a mirror is a sign flip of the x input coordinate: free inside the warp
            flip = torch.rand(b, generator=generator) < 0.5
            theta[:, :, 0] = torch.where(flip.view(b, 1), -theta[:, :, 0], theta[:, :, 0])
        brightness = u(FULL["brightness"] * s)
        contrast = 1.0 + u(FULL["contrast"] * s)
        if device.type == "cpu":
            return theta, contrast, brightness
        return in_one_copy(theta, contrast, brightness, device)

    def __call__(
        self, x: torch.Tensor, generator: torch.Generator | None = None, normalize: Normalize | None = None
    ) -> torch.Tensor:
        """x: [B, C, H, W] float in [0, 1] → augmented (and, if given, normalized) batch.

        At strength 0 without flips the images are untouched (x itself, or normalize(x))."""
        if self.strength == 0.0 and not self.hflip:
            return normalize(x) if normalize is not None else x
        theta, contrast, brightness = self.draw(x.shape[0], generator, x.device, x.dtype)
        mu, sd = (normalize.mean, normalize.std) if normalize is not None else (0.0, 1.0)
        if x.device.type == "cpu" and x.dtype == torch.float32:
            out = fastwarp.augment(x, theta, contrast, brightness, mu, sd) if fastwarp.usable(x) else None
            return out if out is not None else augment_opencv(x, theta, contrast, brightness, mu, sd)
        return augment_torch(x, theta, contrast, brightness, mu, sd)


def augment_torch(
    x: torch.Tensor, theta: torch.Tensor, contrast: torch.Tensor, brightness: torch.Tensor, mu: float, sd: float
) -> torch.Tensor:
    """The definition: warp(x) = grid_sample on the affine grid (bilinear, border padding,
    align_corners=False); then per image y = warp·c + mean(warp)·(1 − c) + brightness, clipped to
    [0, 1], normalized (y − mu)/sd; done as one multiply-add and one clamp."""
    b, h, w = x.shape[0], x.shape[2], x.shape[3]
    out = F.grid_sample(x, affine_grid(theta, h, w), mode="bilinear", padding_mode="border", align_corners=False)
    c, bright = contrast.view(b, 1, 1, 1), brightness.view(b, 1, 1, 1)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    scale, shift = c / sd, (mean * (1 - c) + bright - mu) / sd
    return torch.addcmul(shift, out, scale).clamp_((0.0 - mu) / sd, (1.0 - mu) / sd)


def augment_opencv(
    x: torch.Tensor, theta: torch.Tensor, contrast: torch.Tensor, brightness: torch.Tensor, mu: float, sd: float
) -> torch.Tensor:
    """augment_torch's result for a CPU float32 batch, image by image with OpenCV."""
    b, c, h, w = x.shape
    src = x.detach().contiguous().numpy()
    out = torch.empty((b, c, h, w), dtype=torch.float32)
    dst = out.numpy()
    maps = pixel_affine(theta, h, w)
    scale = (contrast.double() / sd).tolist()
    shift = ((1 - contrast.double()) / sd).tolist(), ((brightness.double() - mu) / sd).tolist()
    # the warp reads along rotated lines, which hardware prefetchers do not follow: for a large
    # image, one in-order pass first pulls it into cache (the warp then runs 2x faster at 224 px)
    large = c * h * w * 4 > _LARGE_BYTES
    for k in range(b):
        planes, warped = src[k].reshape(c * h, w), dst[k].reshape(c * h, w)
        if large:
            cv2.sumElems(planes)
        for p in range(c):
            cv2.warpAffine(src[k, p], maps[k], (w, h), dst[k, p], *_WARP)
        mean = cv2.sumElems(warped)[0] / warped.size
        # warped·c/sd + mean·(1 − c)/sd + (brightness − mu)/sd, in place (src2 is weighted 0)
        cv2.addWeighted(warped, scale[k], warped, 0.0, mean * shift[0][k] + shift[1][k], warped)
    return out.clamp_((0.0 - mu) / sd, (1.0 - mu) / sd)


@dataclass(frozen=True)
class Normalize:
    """(x - mean) / std with the training set's statistics (stored with every checkpoint)."""

    mean: float = 0.5
    std: float = 0.25

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std
