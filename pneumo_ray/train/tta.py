"""Deterministic test-time augmentation: a model's probability is the mean over a fixed set of views
of each image (the image itself, four shifts of 4 % of its side, zoom 0.9 and 1.1). No randomness;
each image's views depend on that image alone, so the result does not depend on the batch.

Validation (checkpoint selection) and test apply the same views (`loop.predict(tta=True)`): the
checkpoint is chosen on the scores it is tested with. The views are warps of `augment_torch`, the
definition of the training augmentation, with the photometric part at identity; probabilities (not
logits) are averaged, so the decision threshold of the loss keeps its meaning as a probability.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import torch

from pneumo_ray.train.augment import Normalize, augment_torch

# (zoom, shift x, shift y): zoom > 1 magnifies; shifts as fractions of the image's side
VIEWS: tuple[tuple[float, float, float], ...] = (
    (1.0, 0.0, 0.0),
    (1.0, 0.04, 0.0),
    (1.0, -0.04, 0.0),
    (1.0, 0.0, 0.04),
    (1.0, 0.0, -0.04),
    (0.9, 0.0, 0.0),
    (1.1, 0.0, 0.0),
)


@functools.cache
def _maps(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The views' output→input maps in grid units (the image spans 2: divide by the zoom, then shift),
    [len(VIEWS), 2, 3] on `device`: copied there once per process, not per batch (each copy from the
    host made it wait for a GPU)."""
    maps = torch.tensor([[[1 / z, 0.0, 2 * sx], [0.0, 1 / z, 2 * sy]] for z, sx, sy in VIEWS], dtype=dtype)
    return maps.to(device)


def views(x: torch.Tensor, normalize: Normalize) -> Iterator[torch.Tensor]:
    """The normalized views of the batch x ([B, C, H, W] in [0, 1]), in VIEWS' order; the first is
    exactly what evaluation without TTA scores."""
    b = x.shape[0]
    ones, zeros = torch.ones(b, device=x.device, dtype=x.dtype), torch.zeros(b, device=x.device, dtype=x.dtype)
    thetas = _maps(x.device, x.dtype)
    for k, view in enumerate(VIEWS):
        if view == (1.0, 0.0, 0.0):
            yield normalize(x)
        else:
            yield augment_torch(x, thetas[k].expand(b, 2, 3), ones, zeros, normalize.mean, normalize.std)
