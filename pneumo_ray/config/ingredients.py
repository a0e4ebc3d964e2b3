"""The fine-tuning ingredients that are off unless asked for, one row each: weight EMA, mixup, label
smoothing, photometric augmentation and test-time augmentation. They aim at Kermany's train → test
shift (validation AUC ≈ 0.998, test specificity ≈ 0.6).

Each is a TrainConfig field whose default (0 or False) leaves every number as it was. Every reader
takes the list from here: TrainConfig's checks, study.train's and study.sweep's flags (a value for
the run or for every trial) and study.ablate's arm flags, which switch one ON on top of the arm
("transfer+ema-0.999"; config/arms.py). The code where each acts is in train/ (loop.py, ema.py,
photometric.py). None of them touches pre-training, so an ingredient's arm shares the transfer
arm's pre-trainings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pneumo_ray.config.errors import flag_of


@dataclass(frozen=True)
class Ingredient:
    field: str  # TrainConfig field (and SweepConfig field: one value for every trial of a sweep)
    metavar: str | None  # None: an on/off switch (--tta)
    low: float = 0.0  # valid values: low ≤ v < high (high_ok: ≤ high); 0 = off
    high: float = math.inf
    high_ok: bool = False
    help: str = ""

    @property
    def flag(self) -> str:
        return flag_of(self.field)

    def part(self, value: float | bool) -> str:
        """This ingredient's part of an arm's name: 'ema-0.999', 'tta'."""
        name = self.field.replace("_", "-")
        return name if self.metavar is None else f"{name}-{value:g}"

    def problem(self, value: object) -> str | None:
        """Why `value` is not valid for this ingredient; None if it is."""
        if self.metavar is None:
            return None if isinstance(value, bool) else "give true or false"
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and self.low <= value and (value <= self.high if self.high_ok else value < self.high)
        if ok:
            return None
        top = f"at most {self.high:g}" if self.high_ok else f"below {self.high:g}"
        return f"{self.help.split(':')[0]} must be {self.low:g} (off) or more" + (
            f" and {top}" if math.isfinite(self.high) else ", a finite number"
        )


INGREDIENTS: tuple[Ingredient, ...] = (
    Ingredient(
        "ema",
        "DECAY",
        high=1.0,
        help="the EMA decay: validate, select and test an exponential moving average of the fine-tuned "
        "weights (BatchNorm statistics averaged alike), decay min(DECAY, (1+t)/(10+t)) at step t; 0 = off",
    ),
    Ingredient(
        "mixup",
        "ALPHA",
        help="the mixup alpha: train on λ·x_i + (1−λ)·x_j, λ ~ Beta(ALPHA, ALPHA) per batch, each label "
        "keeping its class weight (the threshold stays the unmixed loss's); 0 = off",
    ),
    Ingredient(
        "label_smoothing",
        "EPS",
        high=1.0,
        help="the label smoothing: BCE targets EPS/2 and 1−EPS/2; the decision threshold moves with them "
        "(EPS/2 + (1−EPS)·the unsmoothed one, the same Bayes rule); 0 = off",
    ),
    Ingredient(
        "photometric",
        "S",
        high=1.0,
        high_ok=True,
        help="the photometric strength: histogram-equalisation blend, gamma and contrast per image before "
        "the geometric warp, in [0, 1] (at 1: equalised up to 100 %%, gamma 2^±1, contrast ×(1±0.5)); "
        "0 = off",
    ),
    Ingredient(
        "tta",
        None,
        help="test-time augmentation: validation (checkpoint selection) and test score the mean probability "
        "over 7 fixed views (identity, 4 shifts of 4 %%, zoom 0.9 and 1.1); no randomness",
    ),
)
FIELDS: tuple[str, ...] = tuple(i.field for i in INGREDIENTS)


def ingredient(field: str) -> Ingredient:
    return next(i for i in INGREDIENTS if i.field == field)


def described(config: object) -> str:
    """The ingredients `config` (a TrainConfig or SweepConfig) has on, as flags: '--ema 0.999 --tta'."""
    on = [(i, getattr(config, i.field)) for i in INGREDIENTS if getattr(config, i.field)]
    return " ".join(i.flag if i.metavar is None else f"{i.flag} {v:g}" for i, v in on)
