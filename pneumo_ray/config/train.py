"""Frozen run configuration. Defaults follow the seed study (shallow CNN / DenseNet-121,
CoronaHack pre-training then unfrozen fine-tuning, class weights, 20% validation hold-out)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass

from pneumo_ray.config.data import check_fraction, check_image_size, check_seed
from pneumo_ray.config.errors import at_least, positive, require
from pneumo_ray.config.ingredients import INGREDIENTS

MODELS = ("cnn", "densenet")
# the smallest image each model's poolings leave something of (measured: cnn fails at 15, densenet at 24)
MIN_IMAGE_SIZE = {"cnn": 16, "densenet": 32}
# torch.compile modes (train/loop.py `compiled`); reduce-overhead adds CUDA graphs
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
MAX_LR = 1.0  # Adam(W) moves each weight by about lr per step: above 1 a step exceeds the weights' scale


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
    # fine-tuning ingredients aimed at the train → test shift, off by default (config/ingredients.py)
    ema: float = 0.0  # decay of the weight EMA that validation, selection and test use
    mixup: float = 0.0  # Beta(alpha, alpha) of mixup
    label_smoothing: float = 0.0  # BCE targets eps/2, 1 - eps/2
    photometric: float = 0.0  # strength of equalisation / gamma / contrast, apart from aug_strength
    tta: bool = False  # validation and test score the mean over fixed views

    def __post_init__(self) -> None:
        # numpy scalars (np.float64 read back from Parquet: a sweep's best lr) become Python's own:
        # measured, np.float64 hyper-parameters change how torch combines them and so the numbers a
        # run trains to (val AUC 0.7031 vs 0.7043 at epoch 1); np.int64 would also hash apart (stable_id)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if type(value).__module__ == "numpy" and hasattr(value, "item"):
                object.__setattr__(self, f.name, value.item())
        # FieldError names each field by its flag (--image-size): study.train has one per field
        require(self.model in MODELS, "model", self.model, f"unknown model; choose {' or '.join(MODELS)}")
        low = MIN_IMAGE_SIZE[self.model]
        check_image_size(self.image_size, low=low, why=f" ({self.model} needs at least {low})")
        at_least("epochs", self.epochs, 1, "number of fine-tuning epochs")
        at_least("pretrain_epochs", self.pretrain_epochs, 0, "number of pre-training epochs", why=" (0: none)")
        at_least("batch_size", self.batch_size, 1, "batch size")
        for name, what in (("lr", "fine-tuning learning rate"), ("pretrain_lr", "pre-training learning rate")):
            positive(name, getattr(self, name), what, upper=MAX_LR, why=" (Adam's step is about lr per weight)")
        for name in ("aug_strength", "pretrain_aug_strength"):
            value = getattr(self, name)
            require(
                isinstance(value, (int, float)) and 0.0 <= value <= 1.0,
                name,
                value,
                "the augmentation strength must be in [0, 1] (0: none, 1: the full Keras-style set)",
            )
        cw = self.class_weight
        ok = cw == "auto" or (isinstance(cw, (int, float)) and math.isfinite(cw) and cw > 0)
        require(ok, "class_weight", cw, "give 'auto' (inverse class frequency) or the NORMAL weight, a number above 0")
        positive("class_weight_scale", self.class_weight_scale, "class-weight scale")
        require(self.optimizer in ("adamw", "adam"), "optimizer", self.optimizer, "choose adamw or adam")
        wd = self.weight_decay
        ok = isinstance(wd, (int, float)) and math.isfinite(wd) and wd >= 0
        require(ok, "weight_decay", wd, "the weight decay must be a finite number, 0 or more")
        require(self.schedule in ("cosine", "constant"), "schedule", self.schedule, "choose cosine or constant")
        check_fraction(self.val_fraction)
        check_seed(self.seed)
        for i in INGREDIENTS:
            value = getattr(self, i.field)
            require(i.problem(value) is None, i.field, value, i.problem(value) or "")
        require(
            not (self.freeze_backbone and self.pretrain_epochs == 0),
            "freeze_backbone",
            None,
            "without pre-training the frozen backbone stays at its random initialisation: drop --freeze-backbone "
            "or pre-train (--pretrain-epochs above 0, no --no-pretrain)",
        )

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
