"""One writer per results folder: a sweep or an ablation holds a lock on `<results>/<name>/` while it
runs, so a second command with the same --name is refused at once instead of writing into the same
Parquet tables, Optuna study and Tune experiments (two of them there killed one another).

The lock is an OS lock (filelock: `flock` on `<folder>/.lock`, which NFS/EFS mounts share between
nodes), so the system frees it when its holder ends, however it ends. Beside it, `lock.json` names
the holder (host, pid, start time, command) for the refusal; one left by a holder that is gone is
taken over with a warning. Readers (study.report, study.ablate --summarize) never take it: the
tables are replaced atomically, so a running folder can be read at any time.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from filelock import FileLock, Timeout

from pneumo_ray.config.errors import UserError
from pneumo_ray.storage.atomic import atomic_write

LOCK, HOLDER = ".lock", "lock.json"


def _holder(folder: Path) -> dict | None:
    try:
        record = json.loads((folder / HOLDER).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _who(record: dict | None) -> str:
    if record is None:
        return "another process (its lock.json is not written yet or unreadable)"
    return f"pid {record.get('pid')} on {record.get('host')}, started {record.get('started')} ({record.get('command')})"


def _busy(folder: Path) -> UserError:
    return UserError(
        f"--name {folder.name}: {folder} is in use by {_who(_holder(folder))}; wait for it to end or stop it "
        "(Ctrl-C or kill: it saves its state for --resume), or give another --name"
    )


def check_free(folder: Path) -> None:
    """UserError naming the holder if a running command holds `folder`'s lock. Creates nothing, so a
    command can check it first, before any of its other checks of the folder."""
    if not (folder / LOCK).exists():
        return
    probe = FileLock(str(folder / LOCK), timeout=0)
    try:
        probe.acquire()
    except Timeout:
        raise _busy(folder) from None
    probe.release()


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class FolderLock:
    """`with FolderLock(folder, command):` holds `folder` for this process; UserError naming the holder
    if another process holds it. The folder is created if missing."""

    def __init__(self, folder: Path, command: str) -> None:
        self.folder, self.command = Path(folder), command
        self._lock = FileLock(str(self.folder / LOCK), timeout=0)

    def __enter__(self) -> FolderLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except Timeout:
            raise _busy(self.folder) from None
        left = _holder(self.folder)
        if left is not None:  # its holder ended without releasing: the OS freed the lock, the record stayed
            here = left.get("host") == socket.gethostname()
            gone = "which is no longer running" if here and not _alive(left.get("pid")) else "whose lock was released"
            print(f"warning: {self.folder}: took over the lock left by {_who(left)}, {gone}", file=sys.stderr)
        record = dict(
            host=socket.gethostname(), pid=os.getpid(), started=time.strftime("%Y-%m-%dT%H:%M:%S"), command=self.command
        )
        atomic_write(self.folder / HOLDER, lambda p: p.write_text(json.dumps(record, indent=2)))
        return self

    def forget(self) -> None:
        """Remove the holder's record (also before a hard exit: the OS frees the lock itself)."""
        (self.folder / HOLDER).unlink(missing_ok=True)

    def __exit__(self, *exc: object) -> None:
        self.forget()
        self._lock.release()
