"""Where a sweep or an ablation writes and which Ray it runs on: `OutputSpec`, built by the command
line (or rebuilt from run.json on --resume) and read by the drivers in distributed/."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class OutputSpec:
    """Results folder `<results>/<name>/`, Ray storage and cluster, and whether to resume."""

    name: str
    results: str = "results"  # the folder holding <name>/
    storage: str | None = None  # Ray Tune/Train storage, a shared path or s3://…; None = <folder>/ray
    address: str | None = None  # Ray cluster; None = $RAY_ADDRESS, else a local Ray
    resume: bool = False  # continue the interrupted run in <folder>
    preset: str = "smoke"  # the preset the settings started from (recorded with every row)

    @property
    def folder(self) -> Path:
        return Path(self.results) / self.name

    @property
    def ray_storage(self) -> str:
        return self.storage or str((self.folder / "ray").resolve())

    def replace(self, **changes: object) -> OutputSpec:
        return dataclasses.replace(self, **changes)
