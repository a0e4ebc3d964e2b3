"""Progress reports: the one implementation that the cache builder and the training loop share.

    with progress(total=len(paths), label="decoding target-train", unit="img") as bar:
        for chunk in chunks:
            ...
            bar.update(len(chunk), loss=0.31)

Where the output goes decides its form: a terminal gets tqdm's live, self-overwriting bar; anything
else (a log file, CI, a Ray worker, whose stderr is a pipe) gets a plain line at most every
`interval` seconds (30 by default) and one at the end, because a log file keeps every redraw and a
carriage return there turns minutes of progress into one unreadable line. Disabled: silent.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TextIO

from tqdm import tqdm

LOG_INTERVAL_S = 30.0  # a log file: at most one line this often
TTY_INTERVAL_S = 0.5  # a terminal: redraw at most this often


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _postfix_text(postfix: dict[str, object]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in postfix.items())


class Progress:
    """Progress of `total` units; `update(n, **postfix)` after each n more are done, `close()` at the end
    (or use it as a context manager). Build it with `progress(...)`."""

    def __init__(
        self,
        total: int,
        label: str,
        *,
        enabled: bool = True,
        unit: str = "it",
        stream: TextIO | None = None,
        interval: float | None = None,
    ) -> None:
        self.total, self.label, self.unit, self.enabled = int(total), label, unit, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.live = enabled and _is_terminal(self.stream)
        self.interval = interval if interval is not None else (TTY_INTERVAL_S if self.live else LOG_INTERVAL_S)
        self.done, self.postfix, self.closed = 0, "", False
        self.t0 = time.monotonic()
        self.last_line = self.t0  # line mode: when the last line was written (none at the start)
        self.printed = -1  # line mode: `done` when the last line was written
        self.bar = (
            tqdm(
                total=self.total,
                desc=label,
                unit=unit,
                file=self.stream,
                mininterval=self.interval,
                dynamic_ncols=True,
                leave=True,
            )
            if self.live
            else None
        )

    def update(self, n: int = 1, **postfix: object) -> None:
        """n more units done; `postfix` (e.g. loss=0.31) is shown after the counts. A callable value is
        called only when the report is written (a training loop's loss on a GPU: reading it waits)."""
        if not self.enabled or self.closed:
            return
        self.done += int(n)
        now = time.monotonic()
        due = now - self.last_line >= self.interval or self.done >= self.total
        if due and postfix:
            self.postfix = _postfix_text({k: v() if callable(v) else v for k, v in postfix.items()})
        if self.bar is not None:
            if due:
                self.last_line = now
                if postfix:
                    self.bar.set_postfix_str(self.postfix, refresh=False)
            self.bar.update(n)
            return
        if due:
            self._line(now)

    def _line(self, now: float) -> None:
        meter = tqdm.format_meter(  # ASCII: a log file may be read by anything
            self.done,
            self.total or None,
            now - self.t0,
            prefix=self.label,
            unit=self.unit,
            postfix=self.postfix,
            ascii=True,
        )
        self.stream.write(meter + "\n")
        self.stream.flush()
        self.last_line, self.printed = now, self.done

    def close(self) -> None:
        """The final state (once); a terminal's bar stays on screen."""
        if self.closed:
            return
        self.closed = True
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.printed != self.done and self.done:
            self._line(time.monotonic())

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def progress(
    total: int,
    label: str,
    *,
    enabled: bool = True,
    unit: str = "it",
    stream: TextIO | None = None,
    interval: float | None = None,
) -> Progress:
    """A progress report of `total` units on `stream` (default stderr): a live bar on a terminal, a line
    at most every `interval` seconds (default 30) elsewhere, nothing when not `enabled`."""
    return Progress(total, label, enabled=enabled, unit=unit, stream=stream, interval=interval)
