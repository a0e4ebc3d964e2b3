"""Which study data a run trains and tests on: `DataSpec`, one frozen value from the command line
to every Ray worker. A worker re-opens the same data from it (the decoded cache is a memory map),
so its paths are absolute: a worker's working directory is not the driver's."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path


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
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.source_subset not in ("all", "covid"):
            raise ValueError(f"source_subset must be all or covid, got {self.source_subset!r}")

    def replace(self, **changes: object) -> DataSpec:
        return dataclasses.replace(self, **changes)
