"""A sweep's settings: the fixed training lengths, the search ranges and each trial's resources,
plus the named presets (`--preset`) that fill them in. Plain dataclasses: no torch, no Ray, so that
the command line, the cost estimate (bench/gpu_hours.py) and the Ray layer read the same values.
The search ranges' defaults, scales and valid values come from the table in config/search.py."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from pneumo_ray.config.data import DataSpec
from pneumo_ray.config.errors import FieldError, UserError, at_least, flag_of, positive, require
from pneumo_ray.config.ingredients import FIELDS as INGREDIENT_FIELDS
from pneumo_ray.config.search import SEARCH, default
from pneumo_ray.config.train import MODELS, TrainConfig

PLACEMENTS = ("PACK", "SPREAD", "STRICT_SPREAD", "STRICT_PACK")


@dataclass(frozen=True)
class Resources:
    """One trial's Ray Train job: its workers (DDP), their CPUs and GPUs in all, where they go."""

    workers: int = 1
    cpus: float = 1.0  # split evenly over the workers
    gpus: float = 0.0  # fractions share a GPU
    placement_strategy: str = "PACK"  # PACK, SPREAD or STRICT_SPREAD (one worker per node)
    max_failures: int = 1


@dataclass(frozen=True)
class SweepConfig:
    """A sweep: fixed training settings, the search space and the resources of each trial."""

    models: tuple[str, ...] = ("cnn", "densenet")
    num_samples: int = 2  # trials per model
    image_size: int = 32
    epochs: int = 2
    pretrain_epochs: int = 1
    batch_size: int = 32
    seed: int = 0
    val_fraction: float = 0.2
    # the search space: one field per row of config/search.py (its range_field), default from there
    aug_range: tuple[float, float] = default("aug_range")
    class_weight_scale_range: tuple[float, float] = default("class_weight_scale_range")  # × inverse-frequency
    lr_range: tuple[float, float] = default("lr_range")
    pretrain_lrs: tuple[float, ...] = default("pretrain_lrs")  # categorical, so trials share pre-trainings
    ema_range: tuple[float, ...] = default("ema_range")  # the ingredients: () = not searched
    mixup_range: tuple[float, ...] = default("mixup_range")
    label_smoothing_range: tuple[float, ...] = default("label_smoothing_range")
    photometric_range: tuple[float, ...] = default("photometric_range")
    # the ingredients' values for every trial (config/ingredients.py; off by default), where not searched
    ema: float = 0.0
    mixup: float = 0.0
    label_smoothing: float = 0.0
    photometric: float = 0.0
    tta: bool = False
    grace_period: int = 1
    reduction_factor: int = 2
    workers_per_trial: int = 1
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    placement_strategy: str = "PACK"  # of a job's workers: PACK, SPREAD or STRICT_SPREAD (one per node)
    max_concurrent: int = 0  # 0 = as many as the cluster's resources allow
    max_failures: int = 1
    ensemble: int = 5  # at most K picks of the validation-chosen ensemble per model; 0 = none

    def __post_init__(self) -> None:
        # Everything is checked here, before Ray starts, not inside every trial on the cluster; the
        # FieldError names the flag (--epochs), or the field where no command has one (reduction_factor).
        models = tuple(self.models)
        ok = models and all(m in MODELS for m in models) and len(set(models)) == len(models)
        require(ok, "models", models, f"name {' and/or '.join(MODELS)}, comma-separated, each once")
        for s in SEARCH:  # LOW == HIGH pins a value
            values = tuple(getattr(self, s.range_field))
            reason = s.problem(values, allow_fixed=True)
            if reason:
                raise FieldError(s.range_field, values, reason, flag=s.flag)
        for s in SEARCH:
            if getattr(self, s.range_field) and s.field in INGREDIENT_FIELDS and getattr(self, s.field):
                raise UserError(
                    f"{flag_of(s.field)} {getattr(self, s.field):g} fixes what {s.flag} searches: give one of them"
                )
        at_least("num_samples", self.num_samples, 1, "number of trials per model")
        for model in models:  # the lengths, batch size, seed and split, checked as each trial's TrainConfig
            self.base_config(model)
        at_least(
            "grace_period",
            self.grace_period,
            1,
            "ASHA grace period",
            upper=max(self.epochs, 1),
            why=f" epochs (no trial is stopped before it; --epochs is {self.epochs})",
        )
        at_least("reduction_factor", self.reduction_factor, 2, "ASHA reduction factor", flag="reduction_factor")
        at_least("ensemble", self.ensemble, 0, "cap on the ensemble's picks", upper=100, why=" (0: no ensemble)")
        self._check_resources()

    def _check_resources(self) -> None:
        at_least("workers_per_trial", self.workers_per_trial, 1, "number of Ray Train workers per trial")
        positive("cpus_per_trial", self.cpus_per_trial, "CPUs per trial", why=" (split over its workers)")
        gpus = self.gpus_per_trial
        ok = isinstance(gpus, (int, float)) and math.isfinite(gpus) and gpus >= 0
        require(ok, "gpus_per_trial", gpus, "the GPUs per trial must be 0 or more (fractions share a GPU)")
        per_worker = gpus / self.workers_per_trial
        require(
            per_worker <= 1 or per_worker == int(per_worker),
            "gpus_per_trial",
            gpus,
            f"each of the {self.workers_per_trial} workers would get {per_worker:g} GPUs, and Ray takes a "
            "fraction of one GPU or a whole number: change --gpus-per-trial or --workers-per-trial",
        )
        require(
            self.placement_strategy in PLACEMENTS,
            "placement_strategy",
            self.placement_strategy,
            f"choose {', '.join(PLACEMENTS)}",
        )
        at_least("max_concurrent", self.max_concurrent, 0, "cap on concurrent trials", why=" (0: no cap)")
        at_least("max_failures", self.max_failures, 0, "number of retries of a failed trial", flag="max_failures")

    def base_config(self, model: str) -> TrainConfig:
        return TrainConfig(
            model=model,
            image_size=self.image_size,
            epochs=self.epochs,
            pretrain_epochs=self.pretrain_epochs,
            batch_size=self.batch_size,
            seed=self.seed,
            val_fraction=self.val_fraction,
            pretrain_lr=self.pretrain_lrs[0],
            **{f: getattr(self, f) for f in INGREDIENT_FIELDS},
        )

    def searched(self) -> tuple[str, ...]:
        """The TrainConfig fields this sweep searches, in sampling order (an ingredient's empty range: not)."""
        return tuple(s.field for s in SEARCH if getattr(self, s.range_field))

    def search_ranges(self) -> dict[str, list[float]]:
        """{range field: values} of the search space, as run.json records them (the rows not searched
        left out, so an ablation folder of an older version compares equal)."""
        return {s.range_field: list(getattr(self, s.range_field)) for s in SEARCH if getattr(self, s.range_field)}

    def data_spec(self, data: DataSpec) -> DataSpec:
        """`data` (where the images are) at this sweep's image size, split and pre-training choice."""
        return data.replace(
            image_size=self.image_size,
            split_seed=self.seed,
            val_fraction=self.val_fraction,
            use_pretrain=self.pretrain_epochs > 0,
        )

    @property
    def resources(self) -> Resources:
        return Resources(
            workers=self.workers_per_trial,
            cpus=self.cpus_per_trial,
            gpus=self.gpus_per_trial,
            placement_strategy=self.placement_strategy,
            max_failures=self.max_failures,
        )

    def replace(self, **changes: object) -> SweepConfig:
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, dict] = {
    # synthetic data, tiny images: the whole Tune → Train path end to end in minutes on a laptop
    "smoke": dict(
        models=("cnn", "densenet"),
        num_samples=2,
        image_size=32,
        epochs=2,
        pretrain_epochs=1,
        pretrain_lrs=(1e-3,),
        grace_period=1,
    ),
    # real data within a 2-core CPU's means (shallow CNN at 64 px ≈ 150 img/s)
    "cpu": dict(
        models=("cnn",),
        num_samples=4,
        image_size=64,
        epochs=6,
        pretrain_epochs=2,
        pretrain_lrs=(1e-3,),
        lr_range=(3e-4, 3e-3),
        grace_period=2,
    ),
    # the seed's protocol at 224 px (50 pre-training epochs), sized for GPUs
    "paper": dict(
        models=("cnn", "densenet"),
        num_samples=20,
        image_size=224,
        epochs=30,
        pretrain_epochs=50,
        pretrain_lrs=(3e-4, 1e-3, 3e-3),
        lr_range=(1e-5, 1e-3),
        grace_period=5,
        cpus_per_trial=4.0,
        gpus_per_trial=1.0,
    ),
}
