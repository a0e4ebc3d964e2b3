"""SIGINT (Ctrl-C) and SIGTERM (`ray job stop`, a batch scheduler, spot preemption) of a sweep or an
ablation driver: stop without damage, record what was cut, and say how to go on.

While a driver runs (`Session.run`) both signals are caught. The first one
- inside a Tune experiment (`fit`) asks Tune to stop as its own Ctrl-C does: Tune finishes the event
  at hand, saves its experiment state one last time (the trials it cut stay unfinished there, their
  Optuna trials open, so --resume continues each one from its last checkpoint) and stops the
  trials. Tune's own SIGINT handler is kept off (TUNE_DISABLE_SIGINT_HANDLER) so that SIGTERM gets
  the same treatment and the driver knows of it; the way in is Tune's SIGUSR1 handler, which Tune
  installs for this. Tune takes an epoch's report in one step of its loop and commits the checkpoint
  reported with it in a later one: an experiment with the `tune_stop.StopBetweenSaves` callback is
  asked to stop once no trial has a checkpoint on its way (a step or two later), else --resume would
  train that epoch again from the checkpoint before.
- anywhere else (the data, Ray's start, the test evaluation) raises `Interrupted` at once, except in a
  `shielded()` write (the Parquet tables of one step), which finishes first.
The driver records the trials cut as `interrupted` and ends with one line, `interrupted: N of M
trials finished; resume with: <command>`, exit status 128 + the signal (130 SIGINT, 143 SIGTERM).

A second signal exits at once, as soon as no state is being written: right away while Tune's trials
stop, the rows are collected or Ray shuts down; after Tune's last save or a shielded write when one
is under way (a fraction of a second). Ray's own processes started by this driver end with it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pneumo_ray.config.errors import Interrupted
from pneumo_ray.storage.atomic import atomic_write
from pneumo_ray.storage.lock import FolderLock

if TYPE_CHECKING:
    from ray.tune import ResultGrid, Tuner

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class _State:
    """What the handlers know; one per process, as the handlers are."""

    session: Session | None = None  # the driver running, if any
    signum: int | None = None  # the first signal
    in_tune: bool = False  # inside a Tune experiment's fit()
    tune_saved: bool = False  # Tune's loop has ended and its state is saved (it only stops trials after that)
    tune_waits: bool = False  # the experiment has StopBetweenSaves: it asks Tune once no checkpoint is on its way
    tune_asked: bool = False  # Tune was asked to stop
    shields: int = 0  # shielded writes under way
    leave: bool = False  # a second signal came: exit as soon as no state is being written


_NOW = _State()


def _reset(session: Session | None = None) -> None:
    global _NOW
    _NOW = _State(session=session)


def requested() -> bool:
    """Whether SIGINT or SIGTERM has asked the running driver to stop."""
    return _NOW.signum is not None


def check() -> None:
    """Raise Interrupted if a signal asked to stop (the driver calls it after writing what it has)."""
    if _NOW.signum is not None:
        raise Interrupted(_NOW.signum)


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """A write that a signal must not cut (tables that belong together): a signal during it is
    acted on when it ends."""
    _NOW.shields += 1
    try:
        yield
    finally:
        _NOW.shields -= 1
        if _NOW.leave and _safe():
            _leave_now()


def _say(line: str) -> None:
    os.write(2, (line + "\n").encode())  # not print: a handler may run in the middle of a print


def _safe() -> bool:
    return not _NOW.shields and (not _NOW.in_tune or _NOW.tune_saved)


def _leave_now() -> None:
    session, line = _NOW.session, "interrupted again: stopped at once"
    if session is not None:
        if session.lock is not None:
            session.lock.forget()  # the OS frees the lock itself
        line += f"; resume with: {session.resume}" if session.resumable() else f"; run again: {session.again}"
    _say(line)
    os._exit(128 + (_NOW.signum or signal.SIGINT))


def _before_tune(signum: int, frame: object) -> None:
    """SIGUSR1 before Tune installed its handler (set by `fit` so that a stale one is never called)."""


def _ask_tune_to_stop(frame: object) -> None:
    _NOW.tune_asked = True
    handler = signal.getsignal(signal.SIGUSR1)
    if callable(handler) and handler is not _before_tune:
        handler(signal.SIGUSR1, frame)
        return

    def when_tune_listens() -> None:  # Tune is still setting up: ask once it installed its handler
        while _NOW.in_tune:
            if signal.getsignal(signal.SIGUSR1) is not _before_tune:
                os.kill(os.getpid(), signal.SIGUSR1)
                return
            time.sleep(0.05)

    threading.Thread(target=when_tune_listens, daemon=True).start()


def _on_signal(signum: int, frame: object) -> None:
    if _NOW.signum is not None:
        _NOW.leave = True
        if _NOW.in_tune and not _NOW.tune_asked:  # no more waiting for a checkpoint on its way
            _ask_tune_to_stop(frame)
        if _safe():
            _leave_now()
        return
    _NOW.signum = signum
    again = "Ctrl-C again" if signum == signal.SIGINT else "another signal"
    _say(f"{signal.Signals(signum).name}: stopping; the state is saved for --resume ({again} exits at once)")
    if _NOW.in_tune:
        if not _NOW.tune_waits:  # else StopBetweenSaves asks Tune, after a step that leaves no save on its way
            _ask_tune_to_stop(frame)
    elif not _NOW.shields:
        raise Interrupted(signum)


def tune_waits() -> None:
    """The running experiment's StopBetweenSaves is set up: from now on a signal leaves asking Tune to
    stop to it (`tune_step_ended`)."""
    _NOW.tune_waits = True


def tune_step_ended(checkpoint_on_its_way: bool) -> None:
    """After each step of Tune's loop (StopBetweenSaves): ask Tune to stop if a signal asked for it and
    no trial's checkpoint is on its way (reported, not yet committed to Tune's state)."""
    if _NOW.signum is not None and _NOW.in_tune and not _NOW.tune_asked and not checkpoint_on_its_way:
        _ask_tune_to_stop(None)


def reinstall() -> None:
    """Take SIGINT and SIGTERM back after ray.init (it sets its own SIGTERM handlers: a Python one
    that exits, then Ray core's, which aborts the driver)."""
    if _NOW.session is not None:
        for s in SIGNALS:
            signal.signal(s, _on_signal)


class _TuneSaved(logging.Handler):
    """Tune logs this right after its last save of the experiment state (tune.run, Ray 2.60 as pinned):
    from then on it only stops the trials, which a second signal need not wait for."""

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if text.startswith(("Wrote the latest version of all result files", "Experiment state snapshotting failed")):
            _NOW.tune_saved = True
            if _NOW.leave and _safe():
                _leave_now()


def fit(tuner: Tuner, exp_path: str) -> tuple[ResultGrid, dict[str, tuple[str, dict]]]:
    """`tuner.fit()`, which a signal stops the way Tune's own Ctrl-C does. Returns the ResultGrid and
    the trials the stop cut: {trial folder name: (trial id, config)}, those Tune's saved state keeps
    unfinished, which --resume continues (empty if nothing was cut). Counts the finished trials
    for the running Session. Without a Session, plain `tuner.fit()`."""
    if _NOW.session is None:
        return tuner.fit(), {}
    check()
    saved_usr1 = signal.signal(signal.SIGUSR1, _before_tune)
    tune_log = logging.getLogger("ray.tune.tune")
    level, hook = tune_log.level, _TuneSaved()
    tune_log.addHandler(hook)
    tune_log.setLevel(logging.INFO)
    _NOW.in_tune, _NOW.tune_saved, _NOW.tune_waits, _NOW.tune_asked = True, False, False, False
    try:
        grid = tuner.fit()
    finally:
        _NOW.in_tune = False
        tune_log.removeHandler(hook)
        tune_log.setLevel(level)
        signal.signal(signal.SIGUSR1, saved_usr1 if saved_usr1 is not None else signal.SIG_DFL)
        if _NOW.leave:
            _leave_now()
    cut = unfinished_trials(exp_path) if requested() else {}
    _NOW.session.finished += len(grid) - len(cut)
    return grid, cut


def unfinished_trials(exp_path: str) -> dict[str, tuple[str, dict]]:
    """The trials Tune's saved experiment state holds as unfinished (neither TERMINATED nor ERROR):
    those it runs again, from their last checkpoints, on restore. {trial folder name: (id, config)}."""
    from ray.tune import ExperimentAnalysis
    from ray.tune.experiment import Trial

    done = (Trial.TERMINATED, Trial.ERROR)
    trials = ExperimentAnalysis(exp_path).trials
    return {Path(t.path).name: (t.trial_id, dict(t.config)) for t in trials if t.status not in done}


def _quiet_if_interrupted(hook: Callable) -> Callable:
    """sys.unraisablehook that drops our own Interrupted: a signal that lands while Python runs a
    finalizer (a weakref callback, a __del__) raises there, where Python can only print the exception
    and go on. The stop is not lost (the signal is recorded first, and the driver checks it after its
    next writes), so its traceback is noise in the one-line ending."""

    def hook_(unraisable: object) -> None:
        if not isinstance(getattr(unraisable, "exc_value", None), Interrupted):
            hook(unraisable)

    return hook_


class Session:
    """One invocation of a driver: its signal handling, its hold on the results folder, how many of
    its `total` trials finished, and the commands that go on after a stop (`resume` once its run.json
    exists, else `again`)."""

    def __init__(self, folder: Path, *, total: int | None, resume: str, again: str) -> None:
        self.folder, self.total, self.resume, self.again = Path(folder), total, resume, again
        self.finished = 0
        self.lock: FolderLock | None = None
        self.t0, self.started = time.time(), time.strftime("%Y-%m-%dT%H:%M:%S")
        self._stack = contextlib.ExitStack()

    def hold(self, command: str) -> None:
        """Take the results folder's lock (UserError naming its holder if another command has it),
        held until `run` returns."""
        self.lock = self._stack.enter_context(FolderLock(self.folder, command))

    def resumable(self) -> bool:
        return (self.folder / "run.json").exists()

    def run(self, body: Callable[[], int]) -> int:
        """`body()`'s exit status, or after SIGINT/SIGTERM the one line and 128 + the signal."""
        saved = {s: signal.getsignal(s) for s in SIGNALS}
        env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
        unraisable = sys.unraisablehook
        _reset(session=self)
        try:
            sys.unraisablehook = _quiet_if_interrupted(unraisable)
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
            for s in SIGNALS:
                signal.signal(s, _on_signal)
            with self._stack:  # the folder's lock, released last
                try:
                    return body()
                except Interrupted as e:
                    return self._interrupted(e.signum)
                except SystemExit as e:  # SIGTERM while ray.init runs: Ray's own handler exits(15) then
                    if e.code != signal.SIGTERM:
                        raise
                    return self._interrupted(signal.SIGTERM)
        finally:
            sys.unraisablehook = unraisable
            for s, handler in saved.items():
                signal.signal(s, handler if handler is not None else signal.SIG_DFL)
            if env is None:
                os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
            else:
                os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = env
            _reset()

    def _interrupted(self, signum: int) -> int:
        how = f"resume with: {self.resume}" if self.resumable() else f"run again: {self.again}"
        done = f"{self.finished} of {self.total}" if self.total is not None else f"{self.finished}"
        self._record(signum, how)
        print(f"interrupted: {done} trials finished; {how}", file=sys.stderr, flush=True)
        return 128 + signum

    def _record(self, signum: int, how: str) -> None:
        """This session's entry in run.json (if it wrote one): how it ended and how to go on."""
        path = self.folder / "run.json"
        try:
            run = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        sessions = run.get("sessions") if isinstance(run, dict) else None
        if not sessions or not isinstance(sessions[-1], dict) or str(sessions[-1].get("started")) < self.started:
            return  # interrupted before this session wrote its own
        sessions[-1].update(interrupted_by=signal.Signals(signum).name, seconds=round(time.time() - self.t0, 1))
        run.update(status="interrupted", next=how)
        atomic_write(path, lambda p: p.write_text(json.dumps(run, indent=2, default=str)))
