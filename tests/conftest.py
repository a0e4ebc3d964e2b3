"""Shared fixtures: the real data in ../shared/data (skipped with a reason where it is absent), an
isolated decoded-image cache per test session, and a real local Ray cluster (`ray start` on
loopback, token-authenticated as Ray >= 2.59 requires) that a module's drivers join."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DATA = ROOT.parent / "shared" / "data"
KERMANY = DATA / "chest_xray"
CORONAHACK = DATA / "coronahack"


def _need(path: Path):
    if not path.is_dir():
        pytest.skip(f"real data not found at {path} (the tests read ../shared/data beside the repo root)")
    return path


@pytest.fixture(scope="session")
def kermany_root() -> Path:
    return _need(KERMANY)


@pytest.fixture(scope="session")
def coronahack_root() -> Path:
    return _need(CORONAHACK)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One decoded cache for the whole session: real images are decoded once, as in real use."""
    return tmp_path_factory.mktemp("decoded-cache")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_cli(args: list[str], env: dict, timeout: float = 180) -> str:
    r = subprocess.run([str(BIN / "ray"), *args], env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"ray {' '.join(args)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return r.stdout


@contextlib.contextmanager
def local_cluster(nodes: int = 1, cpus: int = 2) -> Iterator[tuple[str, dict]]:
    """A head and `nodes` - 1 more `ray start` nodes on loopback, `cpus` CPUs each; yields (address, the
    environment a driver needs to join it: RAY_ADDRESS and the auth token). `ray stop --force` after,
    also when a test fails (it stops every Ray on this machine: tests never run Ray side by side)."""
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    port = free_port()
    try:
        # --generate creates ~/.ray/auth_token on a machine that has none (else prints the existing one)
        token = ray_cli(["get-auth-token", "--generate"], env).strip().splitlines()[-1]
        env = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
        address = f"127.0.0.1:{port}"
        # as study.sweep's own local Ray: no per-process metrics export (it slows epochs on 2 cores)
        quiet = json.dumps({"enable_metrics_collection": False})
        head = ["start", "--head", f"--port={port}", f"--num-cpus={cpus}", "--node-ip-address=127.0.0.1"]
        ray_cli([*head, f"--system-config={quiet}"], env)
        for _ in range(nodes - 1):
            ray_cli(["start", f"--address={address}", f"--num-cpus={cpus}", "--node-ip-address=127.0.0.1"], env)
        yield address, {**env, "RAY_ADDRESS": address}
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True, timeout=180)


@pytest.fixture(scope="module")
def ray_head() -> Iterator[tuple[str, dict]]:
    """One local Ray (a head with 2 CPUs) for a module's tests: each driver joins it rather than
    starting and stopping a Ray of its own (seconds each on 2 cores). A killed driver's trials end
    with its job, so the next driver finds the CPUs free."""
    with local_cluster(nodes=1) as cluster:
        yield cluster


def start_sweep(*args: str, env: dict, cache_dir: Path) -> subprocess.Popen:
    """`python -m study.sweep ARGS` in its own process group (a test can kill the driver and all it
    started), output captured, the decoded cache at `cache_dir`."""
    return subprocess.Popen(
        [sys.executable, "-m", "study.sweep", *args],
        cwd=ROOT,
        env={**env, "PNEUMO_RAY_CACHE": str(cache_dir), "RAY_DEDUP_LOGS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def reported(exp: Path) -> list[dict]:
    """Every result Tune recorded in the experiment folder `exp` (one per reported epoch)."""
    return [json.loads(ln) for f in exp.glob("*/result.json") for ln in f.read_text().splitlines() if ln.strip()]


def wait_until(p: subprocess.Popen, ready: Callable[[], object], what: str, timeout: float = 600) -> object:
    """Poll `ready()` every half second until it returns something true (returned), while the process
    `p` is still running; fail the test if `p` ends first (with its output) or `timeout` passes."""
    import time

    deadline = time.time() + timeout
    while not (got := ready()):
        assert p.poll() is None, p.stdout.read()[-3000:]
        if time.time() > deadline:
            pytest.fail(f"{what} did not happen within {timeout:g} s")
        time.sleep(0.5)
    return got


def kill_after_first_report(p: subprocess.Popen, exp: Path) -> None:
    """Once the sweep `p` has reported an epoch in `exp`, SIGKILL the process the reporting worker
    function runs in (its `pid`: a one-worker trial's own process, or rank 0 of a DDP group)."""
    import signal

    reports = wait_until(p, lambda: reported(exp), f"an epoch reported in {exp}")
    os.kill(reports[0]["pid"], signal.SIGKILL)
