"""What a sweep or an ablation prints: a few readable lines, with Ray's own output in a log folder.

`quiet_ray(logs)` sends everything Ray prints (worker and actor stdout/stderr from every node, the
Train controller's chatter, Ray's driver-side log records) to `<results>/<name>/logs/ray.log`
instead of the console; `verbose=True` keeps it live on the console as well. `TrialLines` is a Tune
callback that prints one line when a trial starts, one per epoch, and one when it ends, is stopped
by ASHA or fails (with the error's first line and where its traceback is).
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TextIO

from ray.tune import Callback
from ray.tune.experiment import Trial

Log = Callable[[str], object]

_RAY_HANDLER = "ray_print_logs"  # the handler ray.init installs to print worker output on the driver


def quiet_ray(logs: Path, verbose: bool = False) -> Path:
    """Route Ray's output to `logs`/ray.log (and, with `verbose`, also to the console as Ray prints
    it). Call right after `ray.init(log_to_driver=True)`; returns the log file."""
    import optuna
    from ray._private import ray_logging, worker

    logs.mkdir(parents=True, exist_ok=True)
    path = logs / "ray.log"
    sink: TextIO = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as the driver's Ray
    lock = threading.Lock()

    def to_file(data: dict) -> None:
        who = data.get("actor_name") or data.get("task_name") or ""
        prefix = f"({who} pid={data.get('pid')}, {data.get('ip')}) "
        with lock:
            for line in data.get("lines", []):
                sink.write(prefix + line + "\n")

    dispatcher = ray_logging.global_worker_stdstream_dispatcher
    if not verbose:
        dispatcher.remove_handler(_RAY_HANDLER)
        # the raylet's notices ("N worker processes have been started", a worker's death) are printed
        # by the driver's error listener through this function: to the log as well
        worker.print_to_stdstream = lambda data, ignore_prefix=False: to_file(data)
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "A new study created in RDB …"
    dispatcher.add_handler("pneumo_ray_log_file", to_file)
    handler = logging.StreamHandler(sink)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("ray", "optuna"):
        lg = logging.getLogger(name)
        if not verbose:
            for h in list(lg.handlers):
                lg.removeHandler(h)
            lg.propagate = False
        lg.addHandler(handler)
    return path


@contextlib.contextmanager
def quiet_ray_init(logs: Path) -> Iterator[None]:
    """While `ray.init` runs, whatever it prints to stderr (the token-authentication notice, the
    dashboard address) goes to `logs`/ray.log; the log handler it installs keeps writing there."""
    logs.mkdir(parents=True, exist_ok=True)
    sink = open(logs / "ray.log", "a", buffering=1)  # noqa: SIM115 - Ray's handler keeps using it
    ray_logger = logging.getLogger("ray")  # its handler was bound to the console when ray was imported
    for h in list(ray_logger.handlers):
        ray_logger.removeHandler(h)
    ray_logger.addHandler(logging.StreamHandler(sink))
    saved, sys.stderr = sys.stderr, sink
    try:
        yield
    finally:
        sys.stderr = saved


def first_line(text: str) -> str:
    """The line of a traceback that says what went wrong (its last non-empty line)."""
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return lines[-1][:200] if lines else "unknown error"


def _fmt_s(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class TrialLines(Callback):
    """One line per trial start, epoch and end, with the best validation AUC so far and an ETA
    (remaining epochs of the experiment × the median measured epoch time ÷ concurrency)."""

    def __init__(
        self,
        label: str,
        *,
        epochs: int,
        num_samples: int,
        concurrency: int,
        shown: Sequence[str] = (),
        log: Log | None = None,
    ):
        self.label, self.epochs, self.num_samples = label, epochs, num_samples
        # None = print, looked up when a line is written: Tune pickles its callbacks with the experiment,
        # and a `print` captured here no longer pickles once something replaced builtins.print
        self.concurrency, self.shown, self._log = max(1, concurrency), tuple(shown), log
        self.epoch_times: list[float] = []
        self.done_epochs: dict[str, int] = {}
        self.finished: set[str] = set()
        self.best = float("-inf")
        self.t0 = time.time()

    def log(self, line: str) -> None:
        (self._log or print)(line)

    def _eta(self) -> str:
        if not self.epoch_times:
            return ""
        left = sum(self.epochs - self.done_epochs.get(t, 0) for t in self.done_epochs if t not in self.finished)
        left += (self.num_samples - len(self.done_epochs)) * self.epochs
        return f"  ETA ≤ {_fmt_s(left * statistics.median(self.epoch_times) / self.concurrency)}"

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: object) -> None:
        self.done_epochs.setdefault(trial.trial_id, 0)
        values = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.config.items() if k in self.shown
        )
        self.log(
            f"  {self.label} trial {trial.trial_id} started ({len(self.done_epochs)}/{self.num_samples}): {values}"
        )

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: object) -> None:
        epoch = int(result.get("epoch", 0))
        self.done_epochs[trial.trial_id] = epoch
        if result.get("epoch_seconds"):
            self.epoch_times.append(float(result["epoch_seconds"]))
        auc, best = result.get("val_auc"), result.get("best_val_auc")
        if best is not None:
            self.best = max(self.best, float(best))
        val = f"val AUC {auc:.4f}" if auc is not None else ""
        self.log(
            f"  {self.label} trial {trial.trial_id} epoch {epoch}/{self.epochs}  {val}  (best so far {self.best:.4f})  "
            f"{result.get('epoch_seconds', 0):.1f} s{self._eta()}"
        )

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: object) -> None:
        self.finished.add(trial.trial_id)
        last = trial.last_result or {}
        epoch, best = int(last.get("epoch", 0)), last.get("best_val_auc")
        how = "finished" if epoch >= self.epochs else f"stopped by ASHA after epoch {epoch}"
        best_txt = f"best val AUC {best:.4f} (epoch {last.get('best_epoch')})" if best is not None else "no result"
        self.log(f"  {self.label} trial {trial.trial_id} {how}: {best_txt}")

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: object) -> None:
        self.finished.add(trial.trial_id)
        where = trial.error_file or trial.path
        text = ""
        if trial.error_file and Path(trial.error_file).exists():
            text = Path(trial.error_file).read_text(errors="replace")
        self.log(
            f"  {self.label} trial {trial.trial_id} FAILED: {first_line(text or 'see the log')}  (traceback: {where})"
        )
