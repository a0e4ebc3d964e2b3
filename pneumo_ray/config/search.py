"""The searched hyper-parameters, one row each: what the sweep's Optuna varies, the SweepConfig field
holding its range, the command-line flag, the default range, the scale and what values are valid.

Every reader takes its list from here: the Tune search space (distributed/trials.py), the command
line's flags and their validation (study/common.py), the ablation arms (config/arms.py), the sweep
summary and the report (importance ranges, log axes, columns). Adding a searched hyper-parameter is
one row here, its range field in SweepConfig (tests/test_search_space.py checks they agree) and the
code where it acts. The rows' order is the order Optuna samples in: keep it, or the same seed
proposes other configurations.

The rows after the first four are the fine-tuning ingredients (config/ingredients.py); their default
range is empty, "not searched": such a row is left out of the search space, so an old seed proposes
the configurations it always did, and each trial keeps the configuration's own value (off unless
`--ema` etc. fix one). Give a range (`--mixup-range 0,0.4`) to search it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pneumo_ray.config.errors import UserError


@dataclass(frozen=True)
class Searched:
    """One searched hyper-parameter."""

    name: str  # in words, for messages: "augmentation strength"
    field: str  # TrainConfig field = Tune parameter = trials.parquet column
    range_field: str  # SweepConfig field holding the range (or the choices)
    flag: str  # command-line flag setting range_field
    default: tuple[float, ...]  # SweepConfig's default range (LOW, HIGH) or choices
    log: bool  # sampled (and plotted) on a log scale: values must be positive
    categorical: bool = False  # choices, not a range (pre-training lrs: trials then share pre-trainings)
    bounds: tuple[float, float] | None = None  # valid values, inclusive (besides log's positivity)
    help: str = ""

    @property
    def metavar(self) -> str:
        return "LR[,LR...]" if self.categorical else "LOW,HIGH"

    @property
    def optional(self) -> bool:
        """Searched only when asked for: the default range is empty."""
        return not self.default

    def problem(self, values: tuple[float, ...], *, allow_fixed: bool = False) -> str | None:
        """Why `values` is not a valid range (or set of choices) for this parameter; None if it is.
        A range needs LOW < HIGH; `allow_fixed` also accepts LOW == HIGH (a value pinned, not searched).
        An optional row also accepts no values at all: not searched."""
        if self.optional and not values:
            return None
        if self.categorical:
            if not values:
                return f"give one or more {self.name}s separated by commas"
        elif len(values) != 2:
            return f"give the {self.name} range as LOW,HIGH (two numbers)"
        if not all(math.isfinite(v) for v in values):
            return f"{self.name} values must be finite numbers"
        if not self.categorical and not (values[0] < values[1] or allow_fixed and values[0] == values[1]):
            return f"LOW must be below HIGH for the {self.name} range"
        if self.bounds is not None and not all(self.bounds[0] <= v <= self.bounds[1] for v in values):
            return f"{self.name} must lie in [{self.bounds[0]:g}, {self.bounds[1]:g}]"
        if self.log and not all(v > 0 for v in values):
            scale = "" if self.categorical else " (searched on a log scale)"
            return f"{self.name} must be positive{scale}"
        return None

    def parse(self, text: str) -> tuple[float, ...]:
        """The flag's value ("1e-4,3e-3") as numbers; UserError naming the flag if it is not valid."""
        try:
            values = tuple(float(x) for x in text.split(",") if x.strip())
        except ValueError:
            values = None
        reason = f"expected {self.metavar} (numbers)" if values is None else self.problem(values)
        if reason:
            raise UserError(f"{self.flag} {text}: {reason}")
        return values


SEARCH: tuple[Searched, ...] = (
    Searched(
        "augmentation strength",
        "aug_strength",
        "aug_range",
        "--aug-range",
        (0.0, 1.0),
        log=False,
        bounds=(0.0, 1.0),
        help="fine-tuning augmentation strength, uniform in [LOW, HIGH] within [0, 1]",
    ),
    Searched(
        "class-weight scale",
        "class_weight_scale",
        "class_weight_scale_range",
        "--class-weight-range",
        (0.5, 2.0),
        log=True,
        help="multiplier on the inverse-frequency NORMAL class weight, log-uniform in [LOW, HIGH], > 0",
    ),
    Searched(
        "fine-tuning learning rate",
        "lr",
        "lr_range",
        "--lr-range",
        (1e-4, 3e-3),
        log=True,
        bounds=(0.0, 1.0),  # TrainConfig's (config/train.py MAX_LR): every sampled value must be valid
        help="fine-tuning learning rate, log-uniform in [LOW, HIGH], > 0 and at most 1",
    ),
    Searched(
        "pre-training learning rate",
        "pretrain_lr",
        "pretrain_lrs",
        "--pretrain-lrs",
        (1e-3,),
        log=True,
        categorical=True,
        bounds=(0.0, 1.0),
        help="pre-training learning rates (> 0, at most 1) Optuna chooses among (categorical: trials share "
        "pre-trainings)",
    ),
    # the ingredients, each searched only when its range is given (appended: the sampling order of the
    # rows above stays, so old seeds propose what they did)
    Searched(
        "EMA decay",
        "ema",
        "ema_range",
        "--ema-range",
        (),
        log=False,
        bounds=(0.0, 0.9999),
        help="weight-EMA decay, uniform in [LOW, HIGH] within [0, 0.9999] (0 = off); default: not searched",
    ),
    Searched(
        "mixup alpha",
        "mixup",
        "mixup_range",
        "--mixup-range",
        (),
        log=False,
        bounds=(0.0, 10.0),
        help="mixup's Beta(alpha, alpha), alpha uniform in [LOW, HIGH] within [0, 10] (0 = off); default: not searched",
    ),
    Searched(
        "label smoothing",
        "label_smoothing",
        "label_smoothing_range",
        "--label-smoothing-range",
        (),
        log=False,
        bounds=(0.0, 0.5),
        help="label smoothing of the BCE targets, uniform in [LOW, HIGH] within [0, 0.5] (0 = off); default: not "
        "searched",
    ),
    Searched(
        "photometric strength",
        "photometric",
        "photometric_range",
        "--photometric-range",
        (),
        log=False,
        bounds=(0.0, 1.0),
        help="photometric augmentation strength, uniform in [LOW, HIGH] within [0, 1] (0 = off); default: not searched",
    ),
)
SEARCHED: tuple[str, ...] = tuple(s.field for s in SEARCH)  # the TrainConfig fields, in sampling order


def default(range_field: str) -> tuple[float, ...]:
    """The table's default for a SweepConfig range field (SweepConfig's field defaults read it)."""
    return next(s.default for s in SEARCH if s.range_field == range_field)
