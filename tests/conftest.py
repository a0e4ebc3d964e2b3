"""Shared fixtures: the real data in ../shared/data (skipped with a reason where it is absent), an
isolated decoded-image cache per test session, and a real local Ray cluster (`ray start` on
loopback, token-authenticated as Ray >= 2.59 requires) that the single-node tests' drivers join."""

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
    environment a driver needs to join it: RAY_ADDRESS and the auth token). Every Ray on this machine
    is stopped before (the shared head of `ray_head` included: tests never run Ray side by side) and
    after, also when a test fails."""
    _stop_shared_head()
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
        stop_all_ray()


def stop_all_ray(timeout: float = 60) -> None:
    """`ray stop --force` without its waits: SIGKILL every Ray process on this machine (found as `ray
    stop` finds them) and wait until each has exited. `ray stop` also waits for every killed daemon to
    leave the process table, which takes it 6 s here (PID 1 reaps them only about once a second),
    though an exited (zombie) process holds no port, file or CPU any more."""
    import time

    from ray.scripts.scripts import RAY_PROCESSES, psutil  # Ray's bundled psutil

    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        for keyword, by_name in RAY_PROCESSES:
            text = proc.info["name"] if by_name else subprocess.list2cmdline(proc.info["cmdline"] or [])
            if keyword in (text or ""):
                with contextlib.suppress(psutil.Error):
                    proc.kill()
                    found.append(proc)
                break

    def running(proc) -> bool:
        try:
            return proc.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.time() + timeout
    while (alive := [p for p in found if running(p)]) and time.time() < deadline:
        time.sleep(0.05)
    assert not alive, f"Ray processes still running after SIGKILL: {alive}"
    # and, as `ray stop` does, forget the address the last `ray start` recorded in Ray's temp folder
    from ray._common.utils import reset_ray_address

    reset_ray_address()


_SHARED: dict = {}  # the single-node tests' local Ray: its ExitStack


def _stop_shared_head() -> None:
    if "stack" in _SHARED:
        _SHARED.pop("head")
        _SHARED.pop("stack").close()


@pytest.fixture
def ray_head() -> tuple[str, dict]:
    """One local Ray (a head with 2 CPUs) for every single-node Ray test of the session: each driver
    joins it rather than starting and stopping a Ray of its own (seconds each on 2 cores). Started on
    first use; stopped when a test builds a multi-node cluster (`local_cluster`; those tests run last,
    see `pytest_collection_modifyitems`) and at the end of the session. A killed driver's trials end
    with its job, so the next driver finds the CPUs free."""
    if "head" not in _SHARED:
        stack = contextlib.ExitStack()
        _SHARED["head"] = stack.enter_context(local_cluster(nodes=1))
        _SHARED["stack"] = stack
    return _SHARED["head"]


def pytest_collection_modifyitems(items: list) -> None:
    """The tests that build a multi-node cluster (fixture `cluster`) run last, so the single-node tests
    before them share one local Ray (`ray_head`) instead of one per module."""
    items.sort(key=lambda item: "cluster" in getattr(item, "fixturenames", ()))


def pytest_sessionfinish() -> None:
    _stop_shared_head()


def start_sweep(*args: str, env: dict, cache_dir: Path) -> subprocess.Popen:
    """`python -m study.sweep ARGS` in its own process group (a test can kill the driver and all it
    started), output captured, the decoded cache at `cache_dir`."""
    return start_study("study.sweep", *args, env=env, cache_dir=cache_dir)


def start_study(command: str, *args: str, env: dict, cache_dir: Path) -> subprocess.Popen:
    """`python -m COMMAND ARGS` as `start_sweep` starts study.sweep."""
    return subprocess.Popen(
        [sys.executable, "-m", command, *args],
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


def kill_after_first_report(p: subprocess.Popen, exp: Path) -> dict:
    """Once the sweep `p` has reported an epoch in `exp`, SIGKILL the process the reporting worker
    function runs in (its `worker_pid`: a one-worker trial's own process, or rank 0 of a DDP group); returns
    that report."""
    import signal

    first = wait_until(p, lambda: reported(exp), f"an epoch reported in {exp}")[0]
    os.kill(first["worker_pid"], signal.SIGKILL)
    return first


def finetune_like_trial(results: Path, name: str, trial: object, threads: int | None = None, **fixed: object):
    """The FitResult of the project's fine-tuning in this process with the configuration of sweep
    `name`'s `trial` (a trials.parquet row): its searched values on the sweep's base, `fixed` on top,
    the sweep's data and seed, and `threads` torch threads if given (the trial's, for equal numbers)."""
    import torch

    from pneumo_ray.config.output import OutputSpec
    from pneumo_ray.data.study_data import load_study_data
    from pneumo_ray.distributed.sweep import specs_from_run
    from pneumo_ray.storage.results import read_results
    from pneumo_ray.train.protocol import finetune

    run = read_results(results / name).run
    sweep, data, _ = specs_from_run(run, OutputSpec(name=name, results=str(results)))
    searched = {k: float(getattr(trial, k)) for k in ("aug_strength", "class_weight_scale", "lr")}
    cfg = sweep.base_config(str(trial.model)).replace(**searched, **fixed)
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        return finetune(cfg, load_study_data(data, quiet=True, log=None), torch.device("cpu"), log=None)[1]
    finally:
        torch.set_num_threads(before)
