"""Grad-CAM (Selvaraju et al., 2017): where in an image lies the evidence for the model's decision.
The last convolutional feature map A is weighted by the spatially averaged gradient of the score,
ReLU(Σ_k mean(∂score/∂A_k)·A_k), upsampled to the image and scaled to [0, 1]. The score is the
logit for images predicted PNEUMONIA and −logit for those predicted NORMAL, so the map always
shows the evidence for what the model decided."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pneumo_ray.train.augment import Normalize, to_float
from pneumo_ray.train.checkpoints import load_weights
from pneumo_ray.train.models import DenseNet121, ShallowCNN, build_model


def layer_candidates(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Feature maps Grad-CAM may use, deepest first. ShallowCNN: the ReLU after each conv block's
    convolution (before its pooling: twice the resolution of the block's output). DenseNet121: the
    final BatchNorm `features.norm5` (the last dense block's output, what the classifier reads, as
    is usual for torchvision's DenseNet), then the ends of the earlier dense blocks."""
    if isinstance(model, ShallowCNN):
        n = len(model.features)
        return [(f"features.{i}.2 (ReLU after conv {i + 1})", model.features[i][2]) for i in reversed(range(n))]
    if isinstance(model, DenseNet121):
        f = model.features
        return [
            ("features.norm5", f.norm5),
            ("features.denseblock3", f.denseblock3),
            ("features.denseblock2", f.denseblock2),
        ]
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)][::-1]


def _capture(model: nn.Module, layers: list[nn.Module], x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    acts: dict[int, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda _m, _i, out, k=k: acts.__setitem__(k, out)) for k, m in enumerate(layers)]
    try:
        logits = model(x)
    finally:
        for h in hooks:
            h.remove()
    return logits, [acts[k] for k in range(len(layers))]


def grad_cam(model: nn.Module, x: torch.Tensor, min_size: int = 2) -> tuple[np.ndarray, np.ndarray, str]:
    """Heat-maps [B, H, W] in [0, 1] for a normalised batch x [B, 1, H, W], the probabilities of
    PNEUMONIA and the layer used: the deepest candidate whose map is at least `min_size` pixels a
    side (at 32 px DenseNet's last map is 1×1, which cannot say *where*). Puts the model in eval
    mode and makes its ReLUs out-of-place."""
    model.eval()
    for m in model.modules():  # in-place ReLUs would overwrite the captured activations
        if isinstance(m, nn.ReLU):
            m.inplace = False
    names, layers = zip(*layer_candidates(model))
    logits, acts = _capture(model, list(layers), x)
    k = next((i for i, a in enumerate(acts) if min(a.shape[-2:]) >= min_size), 0)
    a = acts[k]
    score = torch.where(logits >= 0, logits, -logits)
    (grads,) = torch.autograd.grad(score.sum(), a)
    cam = F.relu((grads.mean(dim=(2, 3), keepdim=True) * a).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    lo = cam.amin(dim=(1, 2), keepdim=True)
    span = cam.amax(dim=(1, 2), keepdim=True) - lo
    cam = torch.where(span > 0, (cam - lo) / span.clamp_min(1e-12), torch.zeros_like(cam))
    return cam.detach().numpy(), torch.sigmoid(logits).detach().numpy().astype(np.float64), names[k]


def checkpoint_file(path: str | os.PathLike | None) -> Path | None:
    """The weights file of a checkpoint: the file itself, or a Ray checkpoint directory's
    best.safetensors (else its only .safetensors file)."""
    if not path or "://" in str(path):
        return None
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        if (p / "best.safetensors").exists():
            return p / "best.safetensors"
        found = sorted(p.glob("*.safetensors"))
        return found[0] if len(found) == 1 else None
    return None


def load_model(path: str | os.PathLike, model_name: str | None = None) -> tuple[nn.Module, dict]:
    """The network of a checkpoint (its config names the architecture), in eval mode, and its metadata."""
    state, meta = load_weights(path)
    name = (meta.get("config") or {}).get("model") or model_name
    if name is None:
        raise ValueError(f"{path}: the checkpoint's metadata does not name its model")
    model = build_model(name)
    model.load_state_dict(state)
    return model.eval(), meta


def explain(
    path: str | os.PathLike, images_u8: np.ndarray, model_name: str | None = None
) -> tuple[np.ndarray, np.ndarray, str]:
    """Grad-CAM maps for uint8 images [B, S, S] with a checkpoint's own normalization:
    (maps [B, S, S], probabilities [B], layer name)."""
    model, meta = load_model(path, model_name)
    norm = Normalize(**meta["normalize"]) if meta.get("normalize") else Normalize()
    x = norm(to_float(torch.from_numpy(np.ascontiguousarray(images_u8))))
    return grad_cam(model, x)
