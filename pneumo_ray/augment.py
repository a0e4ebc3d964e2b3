"""Batched augmentation + normalization on tensors, on whatever device the batch lives on.

One `strength` in [0, 1] scales the Keras ImageDataGenerator-style set that such studies use.
At strength 1: rotation ±15°, shifts ±10%, zoom ±15%, shear ±0.15, brightness ±0.15, contrast ×(1±0.25).
Strength 0 is exactly the identity. Horizontal flip is optional and off by default: chest X-rays
are not mirror-symmetric (the heart sits on the patient's left).
All geometric transforms of a batch are one `affine_grid` + `grid_sample` call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

FULL = dict(rotation_deg=15.0, shift=0.10, zoom=0.15, shear=0.15, brightness=0.15, contrast=0.25)


def to_float(batch_u8: torch.Tensor) -> torch.Tensor:
    """[B, H, W] or [B, 1, H, W] uint8 → [B, 1, H, W] float in [0, 1]."""
    x = batch_u8 if batch_u8.dim() == 4 else batch_u8.unsqueeze(1)
    return x.float().div_(255.0)


@dataclass(frozen=True)
class Augment:
    strength: float = 0.5
    hflip: bool = False

    def __post_init__(self):
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"augmentation strength must be in [0, 1], got {self.strength}")

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """x: [B, 1, H, W] float in [0, 1] → augmented copy (x itself at strength 0, no flip)."""
        s = self.strength
        if s == 0.0 and not self.hflip:
            return x
        b, dev = x.shape[0], x.device

        def u(scale):  # uniform in [-scale, scale], drawn on the CPU generator for reproducibility
            return ((torch.rand(b, generator=generator) * 2 - 1) * scale).to(dev)

        out = x
        if s > 0:
            angle = u(math.radians(FULL["rotation_deg"] * s))
            zoom = 1.0 + u(FULL["zoom"] * s)
            shear = u(FULL["shear"] * s)
            tx, ty = u(FULL["shift"] * 2 * s), u(FULL["shift"] * 2 * s)  # grid units span 2
            cos, sin = torch.cos(angle), torch.sin(angle)
            # output→input sampling matrix: rotation · shear, scaled by 1/zoom (zoom > 1 magnifies)
            theta = torch.stack([
                torch.stack([cos, -sin + shear * cos, tx], 1),
                torch.stack([sin, cos + shear * sin, ty], 1)], 1) / zoom.view(b, 1, 1)
            theta[:, :, 2] = torch.stack([tx, ty], 1)
            grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
            out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
            brightness = u(FULL["brightness"] * s).view(b, 1, 1, 1)
            contrast = (1.0 + u(FULL["contrast"] * s)).view(b, 1, 1, 1)
            mean = out.mean(dim=(1, 2, 3), keepdim=True)
            out = ((out - mean) * contrast + mean + brightness).clamp_(0.0, 1.0)
        if self.hflip:
            flip = (torch.rand(b, generator=generator) < 0.5).to(dev)
            out = torch.where(flip.view(b, 1, 1, 1), out.flip(-1), out)
        return out


@dataclass(frozen=True)
class Normalize:
    """(x - mean) / std with the training set's statistics (stored with every checkpoint)."""
    mean: float = 0.5
    std: float = 0.25

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def image_stats(images, max_images: int = 2000, seed: int = 0) -> Normalize:
    """Mean/std of pixel values in [0, 1] over (a seeded sample of) a uint8 image array."""
    import numpy as np

    n = len(images)
    idx = np.sort(np.random.default_rng(seed).choice(n, min(n, max_images), replace=False))
    sample = np.asarray(images[idx], dtype=np.float64) / 255.0
    return Normalize(float(sample.mean()), float(max(sample.std(), 1e-3)))
