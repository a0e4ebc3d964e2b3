"""Which study data a run trains and tests on: `DataSpec`, one frozen value from the command line
to every Ray worker. A worker re-opens the same data from it (the decoded cache is a memory map),
so its paths are absolute: a worker's working directory is not the driver's."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from pneumo_ray.config.errors import at_least, require

# Each image is decoded once to SIZE² bytes and kept on disk: 1024 px is already 1 MiB per image,
# 12 GiB for Kermany + CoronaHack (the seed study used 224). Before this bound a typo of a few more
# digits asked numpy for hundreds of GiB; below 16 px the shallow CNN has nothing left after its
# poolings (DenseNet needs 32: config/train.py).
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 1024
SEED_MAX = 2**32 - 1  # numpy's and Optuna's seeds are 32-bit


def check_image_size(value: int, field: str = "image_size", low: int = MIN_IMAGE_SIZE, why: str = "") -> None:
    """FieldError unless `value` is a decode size from `low` to MAX_IMAGE_SIZE pixels per side."""
    if isinstance(value, int) and value > MAX_IMAGE_SIZE:
        why = "; each image is decoded to SIZE² bytes (1 MiB at 1024, 12 GiB for both data sets; the seed used 224)"
    at_least(field, value, low, "image size", upper=MAX_IMAGE_SIZE, why=" pixels per side" + why)


def check_fraction(value: float, field: str = "val_fraction") -> None:
    ok = isinstance(value, (int, float)) and 0.0 < value < 1.0
    require(
        ok, field, value, "the validation fraction must lie strictly between 0 and 1 (0.2: a fifth of the patients)"
    )


def check_seed(value: int, field: str = "seed") -> None:
    at_least(field, value, 0, "seed", upper=SEED_MAX, why=" (numpy and Optuna take 32-bit seeds)")


def _absolute(path: str | os.PathLike | None) -> str | None:
    return None if path is None else str(Path(path).resolve())


@dataclass(frozen=True)
class DataSpec:
    """The target's train/val/test split and the pre-training source (`data.study_data.load_study_data`)."""

    data_root: str | None = None  # Kaggle chest_xray/ folder; None = the synthetic phantoms
    pretrain_root: str | None = None  # Kaggle CoronaHack folder; None = synthetic source (with synthetic target)
    image_size: int = 64
    split_seed: int = 0  # the patient-grouped validation split
    val_fraction: float = 0.2
    use_pretrain: bool = True  # load the pre-training source at all
    allow_overlap: bool = False  # keep source images shared with validation/test (the seed's leaky arm)
    source_subset: str = "all"  # CoronaHack: all pneumonia, or "covid"
    cache_dir: str | None = None  # decoded images + pre-trained weights; None = $PNEUMO_RAY_CACHE or ~/.cache

    def __post_init__(self) -> None:
        for name in ("data_root", "pretrain_root", "cache_dir"):
            object.__setattr__(self, name, _absolute(getattr(self, name)))
        check_image_size(self.image_size)
        check_seed(self.split_seed, "split_seed")
        check_fraction(self.val_fraction)
        require(self.source_subset in ("all", "covid"), "source_subset", self.source_subset, "choose all or covid")
        require(
            self.use_pretrain or not self.allow_overlap,
            "allow_overlap",
            None,
            "it changes which source images pre-train, and this run does not pre-train "
            "(--no-pretrain or --pretrain-epochs 0): drop one of them",
            flag="--allow-test-overlap",
        )

    @classmethod
    def from_record(cls, recorded: dict) -> DataSpec:
        """The data a run used, from the `args` its run.json recorded (roots, overlap, subset, cache);
        the split and image size come from the run's SweepConfig (`SweepConfig.data_spec`)."""
        return cls(
            data_root=recorded.get("data_root"),
            pretrain_root=recorded.get("pretrain_root"),
            allow_overlap=bool(recorded.get("allow_test_overlap")),
            source_subset=recorded.get("source_subset", "all"),
            cache_dir=recorded.get("cache_dir"),
        )

    def replace(self, **changes: object) -> DataSpec:
        return dataclasses.replace(self, **changes)
