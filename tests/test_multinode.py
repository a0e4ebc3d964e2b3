"""A real two-node Ray cluster on loopback: a head and a second `ray start` node (separate processes,
each with its own CPUs, token-authenticated as Ray >= 2.59 requires), a smoke sweep submitted to it
with --address, trials placed on both nodes, and DDP across the nodes matching one worker.
The cluster is stopped afterwards, also when a test fails."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pneumo_ray.storage.results import read_results

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray(args, env, timeout=180):
    r = subprocess.run([str(BIN / "ray"), *args], env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"ray {' '.join(args)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return r.stdout


@pytest.fixture(scope="module")
def cluster():
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    port = _free_port()
    try:
        # --generate creates ~/.ray/auth_token on a machine that has none (else prints the existing one)
        token = _ray(["get-auth-token", "--generate"], env).strip().splitlines()[-1]
        env = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
        _ray(["start", "--head", f"--port={port}", "--num-cpus=2", "--node-ip-address=127.0.0.1"], env)
        _ray(["start", f"--address=127.0.0.1:{port}", "--num-cpus=2", "--node-ip-address=127.0.0.1"], env)
        yield f"127.0.0.1:{port}", env
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True, timeout=180)


def _sweep(env, cache_dir, *args):
    r = subprocess.run(
        [sys.executable, "-m", "study.sweep", "--preset", "smoke", "--models", "cnn", *args],
        cwd=ROOT,
        env={**env, "PNEUMO_RAY_CACHE": str(cache_dir)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return r.stdout


def test_sweep_runs_on_both_nodes(cluster, tmp_path, cache_dir):
    address, env = cluster
    out = _sweep(
        env,
        cache_dir,
        "--num-samples",
        "4",
        "--max-concurrent",
        "4",
        "--address",
        address,
        "--name",
        "mn",
        "--results",
        str(tmp_path),
    )
    assert "on 2 node(s)" in out
    t = read_results(tmp_path / "mn").trials
    print(t[["trial_id", "node_id", "hostname", "best_val_auc", "test_auc"]].to_string())
    assert len(t) == 4 and t.error.isna().all()
    assert t.node_id.nunique() == 2  # trials ran on both nodes
    run = read_results(tmp_path / "mn").run
    assert run["cluster"]["nodes"] == 2 and run["cluster"]["resources"]["CPU"] == 4


def test_two_worker_ddp_across_nodes_matches_one_worker(cluster, tmp_path, cache_dir):
    """Same seed, same sampled config, same global batch (2 workers x 16 vs 1 x 32): validation AUC
    agrees within 0.05 (DDP changes batch composition, BatchNorm statistics and augmentation draws,
    so the numbers are statistically, not bitwise, equal)."""
    address, env = cluster
    common = [
        "--num-samples",
        "1",
        "--pretrain-epochs",
        "0",
        "--epochs",
        "3",
        "--address",
        address,
        "--results",
        str(tmp_path),
    ]
    _sweep(
        env,
        cache_dir,
        *common,
        "--name",
        "one",
        "--workers-per-trial",
        "1",
        "--cpus-per-trial",
        "1",
        "--batch-size",
        "32",
    )
    _sweep(
        env,
        cache_dir,
        *common,
        "--name",
        "two",
        "--workers-per-trial",
        "2",
        "--cpus-per-trial",
        "2",
        "--batch-size",
        "16",
        "--placement-strategy",
        "STRICT_SPREAD",
    )  # one worker on each node
    one, two = (read_results(tmp_path / n).trials.iloc[0] for n in ("one", "two"))
    print(
        f"1 worker: val AUC {one.best_val_auc:.4f} test AUC {one.test_auc:.4f}; "
        f"2 workers: val AUC {two.best_val_auc:.4f} test AUC {two.test_auc:.4f}"
    )
    assert one.lr == two.lr and one.aug_strength == two.aug_strength  # the same Optuna proposal
    assert one.workers == 1 and two.workers == 2
    assert abs(one.best_val_auc - two.best_val_auc) < 0.05
    assert one.best_val_auc > 0.6 and two.best_val_auc > 0.6
