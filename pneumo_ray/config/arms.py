"""Ablation arms: what each arm flag changes in a TrainConfig, and the reference arm the others
are compared with. Configuration only (no Ray): the analysis layer names the reference from here.

The reference arm is `transfer` (pre-train on the source, fine-tune on the target). Each flag
switches one ingredient off; flags combine into one arm ("no-augment+no-class-weights").
"""

from __future__ import annotations

from dataclasses import dataclass

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
LEAKY = "test-overlap"   # pre-training on all of the source, as the seed study did
SEARCHED = ("aug_strength", "class_weight_scale", "lr", "pretrain_lr")


@dataclass(frozen=True)
class Arm:
    changes: tuple[str, ...] = ()       # keys of CHANGES
    allow_overlap: bool = False

    def __post_init__(self):
        unknown = [c for c in self.changes if c not in CHANGES]
        if unknown:
            raise ValueError(f"unknown arm change(s) {unknown}; known: {sorted(CHANGES)}")
        if self.allow_overlap and "no_pretrain" in self.changes:
            raise ValueError("--allow-test-overlap changes the pre-training data; with --no-pretrain there is none")

    @property
    def name(self) -> str:
        parts = [CHANGES[c][0] for c in self.changes]
        if self.allow_overlap:
            parts = (parts or [REFERENCE]) + [LEAKY]
        return "+".join(parts) if parts else REFERENCE

    @property
    def pretrains(self) -> bool:
        return "no_pretrain" not in self.changes

    def apply(self, cfg: TrainConfig) -> TrainConfig:
        for c in self.changes:
            cfg = cfg.replace(**CHANGES[c][1])
        return cfg

    def searched(self, names) -> list[str]:
        """The searched hyper-parameters this arm leaves free: not those its changes fix, and no
        pre-training learning rate for an arm that does not pre-train."""
        fixed = {k for c in self.changes for k in CHANGES[c][1]}
        if not self.pretrains:
            fixed.add("pretrain_lr")
        return [n for n in names if n not in fixed]
