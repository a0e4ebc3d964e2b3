"""Photometric augmentation apart from the geometric strength: per image, a blend with its histogram-
equalised self, a gamma and a contrast change around its mean, on the batch in [0, 1] before the warp.

Kermany's test images are shifted from its training images in exposure and contrast as much as in
framing; `Augment`'s own contrast/brightness (±25 % / ±0.15 at full strength) is tied to the
geometric strength that the searches keep near 0.1. One `strength` in [0, 1]; at 1: equalisation
weight uniform in [0, 1], gamma 2^u with u uniform in [−1, 1], contrast ×(1 + u/2). Strength 0 is
not applied at all (the loop skips it, and draws nothing).

It runs before the warp as plain batched torch ops, so the three warp implementations of augment.py
(torch, the C kernel, OpenCV) stay as they are: each op is per pixel or per image, and the warp's
bilinear sampling commutes with them up to interpolation. Its draws come from a generator of its own
(loop.py seeds it per epoch and rank), never from the warp's, so strength 0 leaves every other
number unchanged; they are computed on the CPU and reach the batch's device in one copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FULL = dict(equalize=1.0, gamma_log2=1.0, contrast=0.5)
LEVELS = 256  # the images are uint8 / 255: equalisation works on their 256 grey levels


def equalized(x: torch.Tensor) -> torch.Tensor:
    """Per image, each pixel → the share of the image's pixels at or below its grey level, rescaled so
    that the darkest level present maps to 0 (histogram equalisation). x: [B, C, H, W] in [0, 1]."""
    b = x.shape[0]
    level = (x.reshape(b, -1) * (LEVELS - 1)).round_().long()
    ones = torch.ones(level.shape, device=x.device, dtype=x.dtype)
    counts = torch.zeros(b, LEVELS, device=x.device, dtype=x.dtype).scatter_add_(1, level, ones)
    cdf = counts.cumsum(1) / level.shape[1]
    low = cdf.gather(1, level.min(1, keepdim=True).values)  # the share at the darkest level present
    span = (1 - low).clamp_min(1e-6)  # a flat image: span 0, and it maps to itself below
    out = ((cdf.gather(1, level) - low) / span).view_as(x)
    flat = (low >= 1).view(b, *([1] * (x.dim() - 1)))
    return torch.where(flat, x, out)


@dataclass(frozen=True)
class Photometric:
    strength: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"photometric strength must be in [0, 1], got {self.strength}")

    def draw(self, b: int, generator: torch.Generator, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """[B, 3]: equalisation weight, gamma, contrast per image; drawn and computed on the CPU, then
        moved to `device` in one copy (pinned and non-blocking on CUDA: no wait for the device)."""
        u = torch.rand(b, 3, generator=generator, dtype=torch.float64)
        s = self.strength
        params = torch.stack(
            [
                u[:, 0] * FULL["equalize"] * s,
                torch.exp2((u[:, 1] * 2 - 1) * FULL["gamma_log2"] * s),
                1 + (u[:, 2] * 2 - 1) * FULL["contrast"] * s,
            ],
            1,
        ).to(dtype)
        if device.type == "cuda":
            params = params.pin_memory()
        return params.to(device, non_blocking=True)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """x: [B, C, H, W] float in [0, 1] → the changed batch, in [0, 1]."""
        p = self.draw(x.shape[0], generator, x.device, x.dtype)
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        eq, gamma, contrast = (p[:, k].view(shape) for k in range(3))
        x = torch.lerp(x, equalized(x), eq)
        x = x.clamp_min(0).pow_(gamma)  # clamp: lerp may round a hair below 0
        mean = x.mean(dim=tuple(range(1, x.dim())), keepdim=True)
        return torch.addcmul(mean * (1 - contrast), x, contrast).clamp_(0.0, 1.0)
