"""The seed's two architectures, both with `features` (backbone) and `classifier` (head) parts and
one output logit (P(PNEUMONIA) = sigmoid(logit)); input is one grayscale channel."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """conv3x3 → BN → ReLU → 2×2 max-pool: halves the resolution."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class ShallowCNN(nn.Module):
    """A few conv blocks + a small classifier, as in the seed study's shallow CNN."""

    def __init__(self, widths: Sequence[int] = (32, 64, 128, 256), dropout: float = 0.3) -> None:
        super().__init__()
        chans = (1, *widths)
        self.features = nn.Sequential(*[conv_block(a, b) for a, b in zip(chans, chans[1:])])
        # global pooling makes the head independent of the image size (64 px on CPU, 224 px on GPU)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(widths[-1], 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x)).squeeze(1)


class DenseNet121(nn.Module):
    """torchvision DenseNet-121, randomly initialised (weights=None), one input channel, one logit."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import densenet121

        net = densenet121(weights=None, num_classes=1)
        net.features.conv0 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(net.features.conv0.weight)
        self.features = net.features
        self.classifier = nn.Sequential(nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), net.classifier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x)).squeeze(1)


BUILDERS = {"cnn": ShallowCNN, "densenet": DenseNet121}


def build_model(name: str, **kwargs: Any) -> nn.Module:
    if name not in BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(BUILDERS)}")
    return BUILDERS[name](**kwargs)


def freeze_backbone(model: nn.Module) -> None:
    """Train only the classifier head: backbone weights fixed and its BatchNorm statistics frozen."""
    for p in model.features.parameters():
        p.requires_grad_(False)


def backbone_frozen(model: nn.Module) -> bool:
    """True when no backbone weight trains; the engine then keeps its BatchNorm layers in eval mode."""
    return not any(p.requires_grad for p in model.features.parameters())


def train_mode(model: nn.Module) -> None:
    """model.train(), except that a frozen backbone's BatchNorm statistics stay fixed too."""
    model.train()
    if backbone_frozen(model):
        model.features.eval()
