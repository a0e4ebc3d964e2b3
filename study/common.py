"""The flags the study commands share, and the frozen settings built from them.

One module for every flag that more than one command takes: the data (`--data-root`, …), the
output and cluster (`--results`, `--name`, …), the preset, the training lengths, the search ranges
(generated from the table in pneumo_ray/config/search.py, and checked here, at the command line, so
that a bad range fails in a second with one line instead of inside every trial on the cluster) and
each trial's resources. Only study/ parses arguments: the library takes the dataclasses built here
(SweepConfig, DataSpec, OutputSpec).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pneumo_ray.config.data import DataSpec
from pneumo_ray.config.errors import UserError
from pneumo_ray.config.output import OutputSpec
from pneumo_ray.config.search import SEARCH
from pneumo_ray.config.sweep import PRESETS, SweepConfig
from pneumo_ray.config.train import MODELS

PLACEMENTS = ("PACK", "SPREAD", "STRICT_SPREAD", "STRICT_PACK")


@dataclass(frozen=True)
class Flag:
    """A flag that overrides one SweepConfig field (unset: the preset's value)."""

    flag: str
    field: str
    help: str
    type: Callable = str  # what argparse converts with
    parse: Callable[[str], object] | None = None  # then this, raising ValueError with the message to print
    metavar: str | None = None

    @property
    def dest(self) -> str:
        return self.flag[2:].replace("-", "_")


def _models(text: str) -> tuple[str, ...]:
    return tuple(m.strip() for m in text.split(",") if m.strip())


LENGTHS = (
    Flag("--models", "models", "comma-separated: cnn,densenet", parse=_models),
    Flag("--image-size", "image_size", "pixels per side", int),
    Flag("--epochs", "epochs", "fine-tuning epochs (ASHA's max_t)", int),
    Flag("--pretrain-epochs", "pretrain_epochs", "pre-training epochs (0 = none)", int),
    Flag("--batch-size", "batch_size", "batch size per worker", int),
)
SEARCH_FLAGS = (
    *(Flag(s.flag, s.range_field, s.help, parse=s.parse, metavar=s.metavar) for s in SEARCH),
    Flag("--grace-period", "grace_period", "ASHA: epochs before a trial can be stopped", int),
)
RESOURCES = (
    Flag("--workers-per-trial", "workers_per_trial", "Ray Train workers (DDP) per job", int),
    Flag("--cpus-per-trial", "cpus_per_trial", "CPUs per trial (split over its workers)", float),
    Flag("--gpus-per-trial", "gpus_per_trial", "GPUs per trial; fractions share a GPU (e.g. 0.25)", float),
    Flag(
        "--placement-strategy",
        "placement_strategy",
        "where a job's workers go: PACK (default), SPREAD, STRICT_SPREAD (one worker per node)",
    ),
    Flag("--max-concurrent", "max_concurrent", "cap on concurrent trials (0 = what the resources allow)", int),
)


def add_flags(group: argparse._ActionsContainer, flags: Sequence[Flag]) -> None:
    for f in flags:
        group.add_argument(f.flag, type=f.type, default=None, metavar=f.metavar, help=f.help)


def add_sweep_flags(p: argparse.ArgumentParser, *, preset_help: str, extra: Sequence[Flag] = ()) -> list[Flag]:
    """--preset, the training lengths (+ `extra`), the search space and the resources, in groups.
    Returns the flags `sweep_config` reads."""
    t = p.add_argument_group("training")
    t.add_argument("--preset", choices=sorted(PRESETS), default="smoke", help=preset_help)
    add_flags(t, [*LENGTHS, *extra])
    add_flags(p.add_argument_group("search space (Optuna) and early stopping (ASHA)"), SEARCH_FLAGS)
    add_flags(p.add_argument_group("resources per trial"), RESOURCES)
    return [*LENGTHS, *extra, *SEARCH_FLAGS, *RESOURCES]


def sweep_config(preset: str, args: argparse.Namespace, flags: Sequence[Flag], **fixed) -> SweepConfig:
    """The preset's SweepConfig with every given flag of `flags` and then `fixed` applied; ValueError
    (one line, naming the flag) for a value that is not valid."""
    values = {}
    for f in flags:
        raw = getattr(args, f.dest)
        if raw is not None:
            values[f.field] = f.parse(raw) if f.parse else raw
    sweep = SweepConfig(**{**PRESETS[preset], **values, **fixed})
    bad = [m for m in sweep.models if m not in MODELS]
    if bad or not sweep.models:
        raise ValueError(f"--models must name cnn and/or densenet, got {','.join(sweep.models) or 'nothing'}")
    if sweep.placement_strategy not in PLACEMENTS:
        raise ValueError(
            f"--placement-strategy must be PACK, SPREAD, STRICT_SPREAD or STRICT_PACK, got {sweep.placement_strategy}"
        )
    if sweep.num_samples < 1 or sweep.epochs < 1:
        raise ValueError("--num-samples and --epochs must be at least 1")
    return sweep


def attach_negative_values(argv: Sequence[str], flags: Sequence[Flag]) -> list[str]:
    """argparse reads "-1,2" as an option, not as the value of `--class-weight-range`: join such a
    value to its flag ("--class-weight-range=-1,2"), so that the range check can name the problem."""
    names, out, argv = {f.flag for f in flags}, [], list(argv)
    i = 0
    while i < len(argv):
        if argv[i] in names and i + 1 < len(argv) and re.match(r"-[\d.]", argv[i + 1]):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def add_data_args(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The data flags every study command shares; returns the group for more."""
    d = p.add_argument_group("data")
    d.add_argument("--data-root", help="Kaggle chest_xray/ folder (target); default: synthetic phantoms")
    d.add_argument(
        "--pretrain-root",
        help="Kaggle CoronaHack folder (pre-training source); default: the synthetic "
        "source with the synthetic target, none with a --data-root",
    )
    d.add_argument(
        "--cache-dir",
        help="decoded images + pre-trained weights (default $PNEUMO_RAY_CACHE or "
        "~/.cache/pneumo_ray; on a cluster: shared storage)",
    )
    return d


def data_spec(args: argparse.Namespace, *, allow_overlap: bool = False) -> DataSpec:
    """Where the data are (the image size, split and pre-training choice come from the run's settings).
    A data folder that does not exist is a one-line error here, before any decoding or Ray."""
    for flag, root, what in (
        ("--data-root", args.data_root, "the Kaggle chest_xray/ folder (with train/ and test/)"),
        ("--pretrain-root", args.pretrain_root, "the Kaggle CoronaHack folder (with Chest_xray_Corona_Metadata.csv)"),
    ):
        if root is not None and not Path(root).expanduser().is_dir():
            raise ValueError(f"{flag} {root}: no such folder; give {what}, or leave it out for the synthetic data")
    return DataSpec(
        data_root=args.data_root,
        pretrain_root=args.pretrain_root,
        allow_overlap=allow_overlap,
        cache_dir=args.cache_dir,
    )


def add_output_args(p: argparse.ArgumentParser, name_help: str, resume_help: str) -> argparse._ArgumentGroup:
    o = p.add_argument_group("output and cluster")
    o.add_argument("--results", default="results", help="results folder")
    o.add_argument("--name", help=name_help)
    o.add_argument("--resume", action="store_true", help=resume_help)
    o.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else start a local Ray)")
    o.add_argument("--storage", help="Ray Tune/Train storage, a shared PATH or s3://… (default: <results>/<name>/ray)")
    return o


def output_spec(args: argparse.Namespace, name: str) -> OutputSpec:
    return OutputSpec(
        name=name,
        results=args.results,
        storage=args.storage,
        address=args.address,
        resume=args.resume,
        preset=args.preset,
    )


def run_main(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run a command's `main`: a user's mistake (UserError, or the ValueError of a config check) is one
    line `error: …` on stderr and exit status 2; `--debug` (or PNEUMO_RAY_DEBUG=1) keeps the traceback.
    Anything else is a bug and keeps its traceback."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv or os.environ.get("PNEUMO_RAY_DEBUG") == "1"
    argv = [a for a in argv if a != "--debug"]
    try:
        return main(argv)
    except UserError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def add_debug_flag(p: argparse.ArgumentParser) -> None:
    """--debug: documented here, consumed by run_main before argparse sees it."""
    p.add_argument("--debug", action="store_true", help="show the Python traceback of an error (for bug reports)")
