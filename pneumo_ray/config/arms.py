"""Ablation arms: what each arm flag changes in a TrainConfig, and the reference arm the others
are compared with; `AblationSpec`, one ablation run's own settings. Configuration only (no Ray):
the analysis layer names the reference from here.

The reference arm is `transfer` (pre-train on the source, fine-tune on the target). Each flag of
CHANGES switches one ingredient off; each ingredient of config/ingredients.py (`--ema 0.999`,
`--tta`) switches one on with its value, and the arm's name says it ("transfer+ema-0.999"); flags
combine into one arm ("no-augment+no-class-weights", "transfer+mixup-0.2+tta").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pneumo_ray.config.data import DataSpec, check_seed
from pneumo_ray.config.errors import FieldError, UserError, at_least
from pneumo_ray.config.ingredients import INGREDIENTS, ingredient
from pneumo_ray.config.search import SEARCHED
from pneumo_ray.config.sweep import SweepConfig
from pneumo_ray.config.train import TrainConfig

REFERENCE = "transfer"
# flag → (arm label, what it changes). Pre-training is unchanged by no-class-weights (it is shared
# with the transfer arm at each seed), so that arm isolates the fine-tuning loss weights.
CHANGES: dict[str, tuple[str, dict]] = {
    "no_pretrain": ("no-pretrain", dict(pretrain_epochs=0)),
    "no_augment": ("no-augment", dict(aug_strength=0.0, pretrain_aug_strength=0.0)),
    "no_class_weights": ("no-class-weights", dict(class_weight=1.0, class_weight_scale=1.0)),
    "freeze_backbone": ("freeze-backbone", dict(freeze_backbone=True)),
}
LEAKY = "test-overlap"  # pre-training on all of the source, as the seed study did


@dataclass(frozen=True)
class Arm:
    changes: tuple[str, ...] = ()  # keys of CHANGES
    allow_overlap: bool = False
    on: tuple[tuple[str, float | bool], ...] = ()  # (ingredient field, its value), in INGREDIENTS' order

    def __post_init__(self) -> None:
        unknown = [c for c in self.changes if c not in CHANGES]
        if unknown:
            raise UserError(f"unknown arm change(s) {unknown}; known: {sorted(CHANGES)}")
        order = [i.field for i in INGREDIENTS]
        fields = [f for f, _ in self.on]
        if not set(fields) <= set(order) or len(set(fields)) != len(fields):
            raise UserError(f"arm ingredients {fields}: name each of {', '.join(order)} at most once")
        object.__setattr__(self, "on", tuple(sorted(self.on, key=lambda fv: order.index(fv[0]))))  # one name
        for field, value in self.on:
            i = ingredient(field)
            reason = i.problem(value) if value else "0 is off, as in the arm without the flag: give a value above 0"
            if reason:
                raise FieldError(field, value, reason)
        if self.allow_overlap and "no_pretrain" in self.changes:
            raise UserError("--allow-test-overlap changes the pre-training data; with --no-pretrain there is none")
        if "no_pretrain" in self.changes and "freeze_backbone" in self.changes:
            raise UserError(
                "--freeze-backbone with --no-pretrain would fine-tune a head on a random, frozen backbone: "
                "run them as two arms"
            )

    @property
    def name(self) -> str:
        parts = [CHANGES[c][0] for c in self.changes]
        if self.on:
            parts = (parts or [REFERENCE]) + [ingredient(f).part(v) for f, v in self.on]
        if self.allow_overlap:
            parts = (parts or [REFERENCE]) + [LEAKY]
        return "+".join(parts) if parts else REFERENCE

    @property
    def pretrains(self) -> bool:
        return "no_pretrain" not in self.changes

    def apply(self, cfg: TrainConfig) -> TrainConfig:
        for c in self.changes:
            cfg = cfg.replace(**CHANGES[c][1])
        return cfg.replace(**dict(self.on))

    def searched(self, names: Iterable[str] = SEARCHED) -> list[str]:
        """The searched hyper-parameters (config/search.py; `names`: those the sweep searches) this arm
        leaves free: not those its changes or ingredients fix, and no pre-training learning rate for an
        arm that does not pre-train."""
        fixed = {k for c in self.changes for k in CHANGES[c][1]} | {f for f, _ in self.on}
        if not self.pretrains:
            fixed.add("pretrain_lr")
        return [n for n in names if n not in fixed]

    def data_spec(self, sweep: SweepConfig, data: DataSpec) -> DataSpec:
        """The study data of this arm: the sweep's, with the source loaded only if the arm pre-trains
        and all of it kept for the test-overlap arm."""
        return sweep.data_spec(data).replace(
            use_pretrain=self.pretrains and sweep.pretrain_epochs > 0, allow_overlap=self.allow_overlap
        )


@dataclass(frozen=True)
class AblationSpec:
    """One ablation run: the arm, its seeds and where its configuration comes from (one of: its own
    search of `tune` trials; the best trial of the finished sweep in `from_`; the seed's defaults), and
    whether to build the arm's validation-chosen ensemble of its seeds (`ensemble`: at most K picks)."""

    arm: Arm = Arm()
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    tune: int | None = None
    from_: str | None = None
    ensemble: int = 0  # at most K picks of the arm's seeds for a validation-chosen ensemble; 0 = none

    def __post_init__(self) -> None:
        if not self.seeds:
            raise FieldError("seeds", None, "give at least 1 seed")
        for seed in self.seeds:
            check_seed(seed, "seeds")
        if len(set(self.seeds)) != len(self.seeds):
            raise FieldError("seeds", self.seeds, "each seed once: a repeated seed is the same run twice")
        if self.tune is not None and self.from_:
            raise UserError("--tune and --from are two ways to choose the configuration: give one")
        if self.tune is not None:
            at_least("tune", self.tune, 1, "search budget", why=" trial per model")
        at_least("ensemble", self.ensemble, 0, "cap on the ensemble's picks", upper=100, why=" (0: no ensemble)")

    @property
    def protocol(self) -> str:
        """How the arms' configurations are chosen: every arm of one results folder must share it."""
        if self.tune:
            return f"tune {self.tune}"
        return f"from {Path(self.from_).resolve()}" if self.from_ else "defaults"
