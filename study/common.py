"""The flags the study commands share, and the frozen settings built from them.

One module for every flag that more than one command takes: the data (`--data-root`, …), the
output and cluster (`--results`, `--name`, …), the preset, the training lengths, the search ranges
(generated from the table in pneumo_ray/config/search.py) and each trial's resources. Only study/
parses arguments: the library takes the dataclasses built here (SweepConfig, DataSpec, OutputSpec).

A user's mistake fails here, in a second, with one line (`run_main`), before any decoding or Ray:
the values are checked by the dataclasses as they are built (config/), the places on disk by the
helpers below (a folder to write in that is a file or cannot be written, a data folder that is not
there), and argparse's own errors (an unknown flag, `--epochs x`) come out as the same one line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pneumo_ray.config.data import DataSpec
from pneumo_ray.config.errors import FieldError, Interrupted, UserError
from pneumo_ray.config.ingredients import INGREDIENTS
from pneumo_ray.config.output import OutputSpec
from pneumo_ray.config.search import SEARCH
from pneumo_ray.config.sweep import PRESETS, SweepConfig


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with its errors (an unknown flag, `--epochs x`, a missing value) raised as the one
    line of `run_main` instead of the usage block and exit."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message} ({self.prog} --help lists the flags)")


@dataclass(frozen=True)
class Flag:
    """A flag that overrides one SweepConfig field (unset: the preset's value)."""

    flag: str
    field: str
    help: str
    type: Callable = str  # what argparse converts with
    parse: Callable[[str], object] | None = None  # then this, raising UserError with the message to print
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
    Flag(
        "--workers-per-trial",
        "workers_per_trial",
        "Ray Train workers (DDP) per job; 1 (default) trains in the trial's own, reused process",
        int,
    ),
    Flag("--cpus-per-trial", "cpus_per_trial", "CPUs per trial (split over its workers)", float),
    Flag("--gpus-per-trial", "gpus_per_trial", "GPUs per trial; fractions share a GPU (e.g. 0.25)", float),
    Flag(
        "--placement-strategy",
        "placement_strategy",
        "where a job's workers go: PACK (default), SPREAD, STRICT_SPREAD (one worker per node)",
    ),
    Flag("--max-concurrent", "max_concurrent", "cap on concurrent trials (0 = what the resources allow)", int),
)


def add_ingredient_flags(group: argparse._ActionsContainer, what: str, defaults: object = None) -> None:
    """--ema DECAY, --mixup ALPHA, --label-smoothing EPS, --photometric S, --tta (config/ingredients.py);
    `what` says what a given one does in this command; unset by default, or `defaults`' values (a
    TrainConfig)."""
    for i in INGREDIENTS:
        default = getattr(defaults, i.field) if defaults is not None else None
        if i.metavar is None:
            group.add_argument(i.flag, action="store_true", default=default, help=f"{what}: {i.help}")
        else:
            group.add_argument(i.flag, type=float, default=default, metavar=i.metavar, help=f"{what}: {i.help}")


def ingredient_values(args: argparse.Namespace) -> dict[str, float | bool]:
    """{field: value} of the ingredient flags given."""
    values = {i.field: getattr(args, i.field) for i in INGREDIENTS}
    return {k: v for k, v in values.items() if v is not None}


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


def sweep_config(
    preset: str,
    args: argparse.Namespace,
    flags: Sequence[Flag],
    *,
    flag_names: Mapping[str, str] | None = None,
    **fixed: object,
) -> SweepConfig:
    """The preset's SweepConfig with every given flag of `flags` and then `fixed` applied; UserError
    (one line, naming the flag) for a value that is not valid. `flag_names` renames a field's flag
    where the command spells it otherwise ({"seed": "--split-seed"})."""
    values = {}
    for f in flags:
        raw = getattr(args, f.dest)
        if raw is not None:
            values[f.field] = f.parse(raw) if f.parse else raw
    settings = {**PRESETS[preset], **values, **fixed}
    # a preset's grace period longer than the --epochs asked for: ASHA then stops nothing early, as
    # it would at the preset's length; a --grace-period typed above --epochs is a mistake (checked)
    if "grace_period" not in values and isinstance(settings.get("epochs"), int) and settings["epochs"] >= 1:
        settings["grace_period"] = min(settings.get("grace_period", 1), settings["epochs"])
    try:
        return SweepConfig(**settings)
    except FieldError as e:
        raise e.with_flag(flag_names[e.field]) if flag_names and e.field in flag_names else e from None


def attach_negative_values(argv: Sequence[str], parser: argparse.ArgumentParser) -> list[str]:
    """argparse reads "-1,2" or "-1e-3" as an option, not as the value of the flag before it: join
    such a value to its flag ("--class-weight-range=-1,2"), so that the check can name the problem.
    Applies to every flag of `parser` that takes one value."""
    takes_one = parser._option_string_actions.items()
    names, out, argv = {name for name, action in takes_one if action.nargs is None}, [], list(argv)
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


def check_data_folders(args: argparse.Namespace) -> None:
    """--data-root and --pretrain-root name folders that exist; --cache-dir one that can be written."""
    for flag, root, what in (
        ("--data-root", args.data_root, "the Kaggle chest_xray/ folder (with train/ and test/)"),
        ("--pretrain-root", args.pretrain_root, "the Kaggle CoronaHack folder (with Chest_xray_Corona_Metadata.csv)"),
    ):
        if root is not None and not Path(root).expanduser().is_dir():
            raise UserError(f"{flag} {root}: no such folder; give {what}, or leave it out for the synthetic data")
    if args.cache_dir is not None:
        check_writable_folder("--cache-dir", args.cache_dir)


def data_spec(args: argparse.Namespace, *, allow_overlap: bool = False) -> DataSpec:
    """Where the data are (the image size, split and pre-training choice come from the run's settings).
    A data folder that does not exist is a one-line error here, before any decoding or Ray."""
    check_data_folders(args)
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
    o.add_argument(
        "--address",
        help="Ray cluster to join: its head's host:port, or 'auto' for the cluster this machine is part of "
        "(default: $RAY_ADDRESS, else a new local Ray)",
    )
    o.add_argument("--storage", help="Ray Tune/Train storage, a shared PATH or s3://… (default: <results>/<name>/ray)")
    o.add_argument(
        "--verbose",
        action="store_true",
        help="show Ray's own output (Tune status, Train workers) live; it always goes to <results>/<name>/logs/ray.log",
    )
    return o


def output_spec(args: argparse.Namespace, name: str) -> OutputSpec:
    """The run's OutputSpec; UserError if --name is not a plain name, or --results, <results>/<name> or
    a local --storage cannot be a folder to write in. Creates nothing."""
    out = OutputSpec(
        name=name,
        results=args.results,
        storage=args.storage,
        address=args.address,
        resume=args.resume,
        preset=args.preset,
        verbose=bool(getattr(args, "verbose", False)),
    )
    check_writable_folder("--results", out.results)
    check_writable_folder("--name", out.folder)
    if out.storage is not None and "://" not in out.storage:  # s3://… and the like: the cluster's to check
        check_writable_folder("--storage", out.storage)
    return out


def check_writable_folder(flag: str, path: str | os.PathLike) -> None:
    """`path` can be a folder this process writes in: it is one, or can be created. UserError naming
    `flag` if it is a file, lies under a file, or its nearest existing folder refuses writing (tried
    with a temporary folder, removed at once, since os.access says yes to root on a read-only place).
    Creates nothing that stays."""
    target = Path(path).expanduser().absolute()
    existing = target
    while not os.path.exists(existing) and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == target else f"lies under {existing}, a file"
        raise UserError(f"{flag} {path}: {where}, not a folder; give a folder (it is created if missing)")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".pneumo-ray-write-check-", dir=existing))
    except OSError as e:
        raise UserError(
            f"{flag} {path}: cannot write in {existing} ({e.strerror or e}); give a folder you can write to"
        ) from None


def read_run_json(folder: Path, flag: str) -> dict | None:
    """<folder>/run.json as a dict; None if there is none; UserError naming `flag` if it is damaged."""
    path = folder / "run.json"
    if not path.exists():
        return None
    try:
        run = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(
            f"{flag}: {path} is damaged ({type(e).__name__}: {e}); restore it or start anew under another --name"
        ) from None
    if not isinstance(run, dict):
        raise UserError(f"{flag}: {path} is damaged (not a JSON object); restore it or start anew under another --name")
    return run


def local_gpu_count() -> int | None:
    """GPUs a local Ray would find on this machine, as Ray counts them ($CUDA_VISIBLE_DEVICES, else
    the NVIDIA driver's list); None where that cannot be known cheaply (not Linux, or AMD's driver)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    if not sys.platform.startswith("linux") or os.path.exists("/dev/kfd"):
        return None
    gpus = Path("/proc/driver/nvidia/gpus")
    return len(list(gpus.iterdir())) if gpus.is_dir() else 0


def check_address(address: str | None) -> None:
    """--address (else $RAY_ADDRESS): 'auto', 'local', a ray:// client address, or the host:port of a
    running cluster's head, checked before any work. Ray took a malformed one for a traceback, and
    retried one where nothing listens for minutes before failing."""
    flag, local = ("--address", "leave --address out") if address else ("$RAY_ADDRESS", "unset RAY_ADDRESS")
    address = address or os.environ.get("RAY_ADDRESS")
    if not address or address in ("auto", "local") or "://" in address:
        return
    host, _, port = address.rpartition(":")
    host = host.strip("[]")  # [::1]:6379
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(
            f"{flag} {address}: not an address; give the head's host:port (e.g. 10.0.0.5:6379), 'auto' for "
            f"the cluster this machine belongs to, or {local} to run on a local Ray"
        )
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as e:
        raise UserError(
            f"{flag} {address}: no Ray cluster answers there ({e.strerror or e}); start one "
            f"(`ray start --head` or `ray up cluster.yaml`), give its head's host:port, or {local} to run on "
            "a local Ray"
        ) from None


def check_local_gpus(sweep: SweepConfig, out: OutputSpec, typed: bool) -> None:
    """A local Ray (no --address, no $RAY_ADDRESS) with fewer GPUs than one trial asks for would keep
    every trial pending forever: say so now. `typed`: --gpus-per-trial was given (else the preset's)."""
    if out.address or os.environ.get("RAY_ADDRESS") or not sweep.gpus_per_trial:
        return
    have = local_gpu_count()
    if have is not None and sweep.gpus_per_trial > have:
        source = "" if typed else f" (the {out.preset} preset's)"
        raise UserError(
            f"--gpus-per-trial {sweep.gpus_per_trial:g}{source}: this machine has {have} GPU(s) and no --address "
            "or $RAY_ADDRESS names a cluster, so every trial would wait for a GPU forever; give "
            "--gpus-per-trial 0 or the --address of a cluster with GPUs"
        )


def run_main(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run a command's `main`: a user's mistake (UserError) is one line `error: …` on stderr and exit
    status 2; `--debug` (or PNEUMO_RAY_DEBUG=1) keeps the traceback. Anything else is a bug and keeps
    its traceback."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv or os.environ.get("PNEUMO_RAY_DEBUG") == "1"
    argv = [a for a in argv if a != "--debug"]
    # SIGTERM as SIGINT: Interrupted (a KeyboardInterrupt) until a driver takes both over (interrupts.py)
    main_thread = threading.current_thread() is threading.main_thread()
    saved = signal.signal(signal.SIGTERM, _terminated) if main_thread else None
    try:
        return main(argv)
    except UserError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # before any work that could be resumed
        print("interrupted", file=sys.stderr)
        return 128 + (e.signum if isinstance(e, Interrupted) else signal.SIGINT)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, saved if saved is not None else signal.SIG_DFL)


def _terminated(signum: int, frame: object) -> None:
    raise Interrupted(signum)


def add_debug_flag(p: argparse.ArgumentParser) -> None:
    """--debug: documented here, consumed by run_main before argparse sees it."""
    p.add_argument("--debug", action="store_true", help="show the Python traceback of an error (for bug reports)")
