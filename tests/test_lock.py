"""One writer per results folder (pneumo_ray/storage/lock.py): a second command that would write there
is refused at once, in one line naming the holder, before any data or Ray; a lock left by a process
that is gone is taken over with a warning. (A second sweep refused while a real one runs, which then
finishes normally: tests/test_interrupts.py.)"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pneumo_ray.config.errors import UserError
from pneumo_ray.storage.lock import HOLDER, LOCK, FolderLock, check_free

ROOT = Path(__file__).resolve().parents[1]
HOLD = """
import sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
from pneumo_ray.storage.lock import FolderLock
with FolderLock(Path({folder!r}), "python -m study.sweep --name busy"):
    print("held", flush=True)
    time.sleep(120)
"""


def hold_in_a_process(folder: Path) -> subprocess.Popen:
    """Another process holding `folder`'s lock, until killed."""
    p = subprocess.Popen(
        [sys.executable, "-c", HOLD.format(root=str(ROOT), folder=str(folder))], stdout=subprocess.PIPE, text=True
    )
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_free_folder_is_checked_without_creating_anything(tmp_path):
    check_free(tmp_path / "new")
    assert list(tmp_path.iterdir()) == []
    with FolderLock(tmp_path / "new", "me") as lock:
        record = json.loads((tmp_path / "new" / HOLDER).read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname() and record["command"] == "me"
        assert lock.folder == tmp_path / "new"
    assert not (tmp_path / "new" / HOLDER).exists()  # released: no holder named
    check_free(tmp_path / "new")


def test_a_held_folder_is_refused_naming_the_holder_and_taken_over_once_it_is_gone(tmp_path, capsys):
    folder = tmp_path / "busy"
    holder = hold_in_a_process(folder)
    try:
        started = json.loads((folder / HOLDER).read_text())["started"]
        for attempt in (lambda: check_free(folder), lambda: FolderLock(folder, "me").__enter__()):
            with pytest.raises(UserError) as e:
                attempt()
            text = str(e.value)
            assert f"pid {holder.pid} on {socket.gethostname()}, started {started}" in text, text
            assert text.startswith(f"--name busy: {folder} is in use by") and "\n" not in text
        assert json.loads((folder / HOLDER).read_text())["pid"] == holder.pid  # the holder's record untouched
    finally:
        holder.send_signal(signal.SIGKILL)  # gone without releasing anything: the OS frees the lock
        holder.wait()
    assert (folder / HOLDER).exists()
    check_free(folder)
    with FolderLock(folder, "me"):
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"warning: {folder}: took over the lock left by pid {holder.pid} ")
        assert err[0].endswith("which is no longer running")
        assert json.loads((folder / HOLDER).read_text())["pid"] == os.getpid()


@pytest.mark.parametrize("command", ["study.sweep", "study.ablate", "study.ensemble"])
def test_a_second_command_on_a_busy_name_is_one_line_before_any_work(command, tmp_path):
    """Through the command a user types, with and without --resume: refused in one line naming the
    holder, exit 2, in seconds (no data, no Ray), the holder's lock and record untouched. study.ensemble
    writes into a finished folder, so it is refused the same way while a sweep runs there."""
    folder = tmp_path / "busy"
    holder = hold_in_a_process(folder)
    try:
        for extra in ([], ["--resume"]) if command != "study.ensemble" else ([],):
            t0 = time.time()
            where = ["--name", "busy", "--results", str(tmp_path)] if command != "study.ensemble" else [str(folder)]
            r = subprocess.run(
                [sys.executable, "-m", command, *where, *extra],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert r.returncode == 2, r.stdout + r.stderr
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(
                f"error: --name busy: {folder} is in use by pid {holder.pid}"
            )
            assert r.stdout == "" and time.time() - t0 < 60
        assert sorted(p.name for p in folder.iterdir()) == sorted([LOCK, HOLDER])
        assert holder.poll() is None
    finally:
        holder.kill()
        holder.wait()
