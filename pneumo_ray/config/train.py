"""Frozen run configuration. Defaults follow the seed study (shallow CNN / DenseNet-121,
CoronaHack pre-training then unfrozen fine-tuning, class weights, 20% validation hold-out)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

MODELS = ("cnn", "densenet")


@dataclass(frozen=True)
class TrainConfig:
    model: str = "cnn"
    image_size: int = 64
    epochs: int = 10  # fine-tuning epochs on the target
    pretrain_epochs: int = 5  # 0 = no pre-training (random initialisation)
    lr: float = 1e-3  # fine-tuning learning rate
    pretrain_lr: float = 1e-3
    batch_size: int = 32
    aug_strength: float = 0.5  # fine-tuning augmentation: 0 = none, 1 = the full Keras-style set
    pretrain_aug_strength: float = 0.5  # kept apart so a fine-tuning search shares one pre-training
    hflip: bool = False  # chest X-rays are not mirror-symmetric
    class_weight: str | float = "auto"  # "auto" (from class frequencies) or NORMAL weight (PNEUMONIA = 1)
    class_weight_scale: float = 1.0  # multiplies the NORMAL weight (what a sweep searches)
    optimizer: str = "adamw"  # adamw | adam
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # cosine | constant
    freeze_backbone: bool = False  # fine-tune only the classifier head
    val_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}")
        for name in ("aug_strength", "pretrain_aug_strength"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.class_weight != "auto" and not float(self.class_weight) > 0:
            raise ValueError(f"class_weight must be 'auto' or a positive number, got {self.class_weight!r}")
        if not self.class_weight_scale > 0:
            raise ValueError(f"class_weight_scale must be positive, got {self.class_weight_scale}")
        if self.optimizer not in ("adamw", "adam"):
            raise ValueError(f"optimizer must be adamw or adam, got {self.optimizer!r}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be cosine or constant, got {self.schedule!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes: object) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def pretrain_part(self) -> dict:
        """The fields that determine a pre-training run (its checkpoint can be shared by these)."""
        return {
            k: getattr(self, k)
            for k in (
                "model",
                "image_size",
                "pretrain_epochs",
                "pretrain_lr",
                "batch_size",
                "pretrain_aug_strength",
                "hflip",
                "optimizer",
                "weight_decay",
                "schedule",
                "val_fraction",
                "seed",
            )
        }


def stable_id(obj: object, length: int = 12) -> str:
    """Content hash of a JSON-able object: same content → same id, on any machine."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]
