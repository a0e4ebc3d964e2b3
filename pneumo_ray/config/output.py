"""Where a sweep or an ablation writes and which Ray it runs on: `OutputSpec`, built by the command
line (or rebuilt from run.json on --resume) and read by the drivers in distributed/."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from pneumo_ray.config.errors import require


@dataclass(frozen=True)
class OutputSpec:
    """Results folder `<results>/<name>/`, Ray storage and cluster, and whether to resume."""

    name: str
    results: str = "results"  # the folder holding <name>/
    storage: str | None = None  # Ray Tune/Train storage, a shared path or s3://…; None = <folder>/ray
    address: str | None = None  # Ray cluster; None = $RAY_ADDRESS, else a local Ray
    resume: bool = False  # continue the interrupted run in <folder>
    preset: str = "smoke"  # the preset the settings started from (recorded with every row)
    verbose: bool = False  # Ray's own output live on the console too (always in <folder>/logs/ray.log)

    def __post_init__(self) -> None:
        name, seps = self.name, {"/", os.sep, os.altsep} - {None}
        require(
            isinstance(name, str) and name.strip() != "" and name not in (".", "..") and "\0" not in name,
            "name",
            name,
            "give a name for the folder <results>/<name> (letters, digits, - and _ read best)",
        )
        require(
            not any(sep in name for sep in seps),
            "name",
            name,
            "a name, not a path: it becomes the folder <results>/<name>; give the parent folder with --results",
        )
        require(str(self.results).strip() != "", "results", self.results, "give the folder that holds <name>/")

    @property
    def folder(self) -> Path:
        return Path(self.results) / self.name

    @property
    def ray_storage(self) -> str:
        return self.storage or str((self.folder / "ray").resolve())

    def replace(self, **changes: object) -> OutputSpec:
        return dataclasses.replace(self, **changes)
