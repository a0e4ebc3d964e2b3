"""study.sweep end to end on a real local Ray: Tune + Optuna + ASHA over Ray Train jobs."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import finetune_like_trial, kill_after_first_report, reported, start_sweep, wait_until

from pneumo_ray.distributed.trials import max_concurrent_trials
from pneumo_ray.storage.results import read_results

ROOT = Path(__file__).resolve().parents[1]


def test_concurrency_from_resources():
    assert max_concurrent_trials({"CPU": 2}, 1, 0) == 2
    assert max_concurrent_trials({"CPU": 16, "GPU": 1}, 2, 0.25) == 4  # four CNN trials share one GPU
    assert max_concurrent_trials({"CPU": 64, "GPU": 8}, 8, 2) == 4  # whole-GPU 2-worker DenseNet trials
    assert max_concurrent_trials({"CPU": 3}, 1.5, 0) == 2
    assert max_concurrent_trials({"CPU": 8}, 1, 0, cap=3) == 3
    with pytest.raises(ValueError, match="cluster has 8 CPU and 0 GPU"):
        max_concurrent_trials({"CPU": 8}, 1, 1)


def _sweep(*args, cache_dir, cluster=None):
    """study.sweep in its own process group; with `cluster` (the `ray_head` fixture) it joins that Ray."""
    return start_sweep(*args, env=cluster[1] if cluster else dict(os.environ), cache_dir=cache_dir)


def test_smoke_sweep_both_models(tmp_path, ray_head, capsys):
    # its own cache: the content-addressed pre-training store must start empty for this count
    # (other tests' sweeps would otherwise have computed the same keys already, correctly reused here),
    # but for one entry under the CNN trials' key that records other conditions: it must not be reused
    planted = plant_entry_of_other_conditions(tmp_path / "cache")
    p = _sweep(
        "--preset", "smoke", "--name", "t1", "--results", str(tmp_path), cache_dir=tmp_path / "cache", cluster=ray_head
    )
    out, _ = p.communicate(timeout=900)
    assert p.returncode == 0, out[-4000:]
    res = read_results(tmp_path / "t1")
    t = res.trials
    assert_provenance_filled(t, res.run)
    # the planted entry was refused (said in Ray's log), computed again by one trial and overwritten
    from pneumo_ray.train import checkpoints

    assert checkpoints.load_weights(planted)[1]["conditions"]["threads"] == 1
    assert (
        "made under other conditions (threads 2 → 1); computing it again"
        in (tmp_path / "t1" / "logs" / "ray.log").read_text()
    )
    assert sorted(t.model.unique()) == ["cnn", "densenet"]
    for _model, g in t.groupby("model"):
        assert len(g) == 2 and g.trial_id.is_unique
        assert g[["aug_strength", "class_weight_scale", "lr"]].drop_duplicates().shape[0] == 2  # distinct configs
        # one pre-training per (model, key), not one per trial
        assert g.pretrain_key.nunique() == 1 and g.pretrain_key.notna().all()
        assert int(g.pretrain_computed.sum()) == 1
    assert set(t.stop_reason) <= {"completed", "early_stopped"}
    assert t.best_val_auc.between(0.5, 1).all() and t.test_auc.between(0, 1).all()
    # the best-validation checkpoint's predictions: 624 synthetic test images per trial
    assert res.predictions.groupby("trial_id").size().eq(624).all()
    assert set(res.predictions.trial_id) == set(t.trial_id)
    e = res.epochs
    assert not e.duplicated(["trial_id", "epoch"]).any()
    assert e.groupby("trial_id").epoch.max().to_dict() == t.set_index("trial_id").epochs_run.to_dict()
    run = res.run
    assert run["status"] == "finished" and run["preset"] == "smoke" and run["versions"]["ray"] == "2.60.0"
    assert run["data"]["test_manifest_hash"] and run["sweep"]["num_samples"] == 2
    assert "best trial per model" in out
    assert run["command"].startswith("python -m study.sweep --preset smoke --name t1 --results ")  # to run again
    # a console people can read (was 387 lines): per-trial lines and the summary; Ray's output in logs/
    lines = out.splitlines()
    assert len(lines) <= 60, "\n".join(lines)
    assert sum(" started (" in ln for ln in lines) == 4 and not any("Current best trial" in ln for ln in lines)
    assert (tmp_path / "t1" / "logs" / "ray.log").stat().st_size > 0
    # Optuna's own storage: each model's study, the same trials and parameters as trials.parquet
    for model, g in t.groupby("model"):
        assert_optuna_study_matches(tmp_path / "t1", f"t1-{model}", g)
    dashboard_lists_studies(tmp_path / "t1" / "optuna.db", {"t1-cnn", "t1-densenet"})
    # the best CNN trial, trained again in plain PyTorch from the run record: bit for bit
    from study import common, reproduce

    best = res.best_trials().set_index("model").loc["cnn", "trial_id"]
    assert common.run_main(reproduce.main, [str(tmp_path / "t1"), "--trial", best]) == 0
    assert "agrees: bit-exact" in capsys.readouterr().out

    check_ensembles(tmp_path / "t1", out, tmp_path / "cache")


def check_ensembles(folder: Path, out: str, cache: Path) -> None:
    """The sweep's ensembles (--ensemble 5 by default), chosen from val_predictions.parquet: each trial's
    validation predictions are the ones its best epoch was chosen on; `study.ensemble --ensemble 1` is
    each model's best trial exactly, and it recomputes lost validation predictions, equal, from the
    checkpoints (no training, no Ray)."""
    from pneumo_ray.analysis.metrics import roc_auc

    res = read_results(folder)
    trials = res.trials.set_index("trial_id")
    val = pd.read_parquet(folder / "val_predictions.parquet")
    assert set(val.trial_id) == set(trials.index)
    for tid, g in val.groupby("trial_id"):
        assert roc_auc(g.label, g.probability) == pytest.approx(trials.loc[tid, "best_val_auc"], abs=1e-9)
    ens = pd.read_parquet(folder / "ensemble.parquet")
    assert sorted(ens.model) == ["cnn", "densenet"] and ens.max_k.eq(5).all() and ens.k.between(1, 5).all()
    assert "ensembles chosen on validation" in out and ("DeLong p = " in out) == (ens.k > 1).any()
    (folder / "val_predictions.parquet").rename(folder / "val_before.parquet")
    r = subprocess.run(
        [sys.executable, "-m", "study.ensemble", str(folder), "--ensemble", "1", "--n-boot", "200"],
        cwd=ROOT,
        env={**os.environ, "PNEUMO_RAY_CACHE": str(cache)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    key = ["trial_id", "path"]
    before = pd.read_parquet(folder / "val_before.parquet").sort_values(key).reset_index(drop=True)
    again = pd.read_parquet(folder / "val_predictions.parquet").sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(again[before.columns], before, check_exact=True)
    one = pd.read_parquet(folder / "ensemble.parquet").set_index("model")
    preds = pd.read_parquet(folder / "ensemble_predictions.parquet")
    for row in res.best_trials().itertuples():
        assert one.loc[row.model, "best_single"] == row.trial_id and one.loc[row.model, "k"] == 1
        assert (
            one.loc[row.model, "test_auc"] == row.test_auc and one.loc[row.model, "test_accuracy"] == row.test_accuracy
        )
        mine = res.predictions[res.predictions.trial_id == row.trial_id].sort_values("path")
        e = preds[preds.model == row.model].sort_values("path")
        assert (e.prediction.to_numpy() == mine.prediction.to_numpy()).all()


def plant_entry_of_other_conditions(cache: Path) -> Path:
    """An entry in the pre-training store under the key the smoke preset's CNN trials compute (one
    torch thread: Ray gives a 1-CPU trial OMP_NUM_THREADS=1), whose metadata records 2 threads."""
    import torch

    from pneumo_ray.config.data import DataSpec
    from pneumo_ray.config.sweep import PRESETS, SweepConfig
    from pneumo_ray.data.study_data import load_study_data
    from pneumo_ray.train import store
    from pneumo_ray.train.conditions import training_conditions
    from pneumo_ray.train.models import build_model
    from pneumo_ray.train.protocol import pretrain_key

    sweep = SweepConfig(**PRESETS["smoke"])
    data = load_study_data(sweep.data_spec(DataSpec(cache_dir=str(cache))), quiet=True, log=None)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cond = training_conditions(torch.device("cpu"))
    finally:
        torch.set_num_threads(before)
    key = pretrain_key(sweep.base_config("cnn"), data.info["source_manifest_hash"], cond)
    entry = store.Entry.of(store.folder(cache), key)
    return store.write(entry, build_model("cnn").state_dict(), {"key": key}, {**cond, "threads": 2})


def assert_provenance_filled(rows: pd.DataFrame, run: dict) -> None:
    """Every provenance column of every row is filled (gpu_name is None on a CPU; the pre-training
    columns where the row pre-trained), and run.json's session records the driver's half."""
    from pneumo_ray.storage import provenance

    for col in provenance.COLUMNS:
        assert col in rows, col
        if col == "gpu_name":
            assert rows[col].isna().all()
        elif col not in provenance.PRETRAIN_COLUMNS:
            assert rows[col].notna().all(), col
    assert (rows.device == "cpu").all() and rows.torch_threads.eq(1).all() and rows.train_code.str.len().eq(16).all()
    assert rows.ray_version.eq("2.60.0").all() and rows.requirements_sha256.str.len().eq(16).all()
    session = run["sessions"][-1]["provenance"]
    assert session["code_commit"] == rows.code_commit.iloc[0] and session["ray_version"] == "2.60.0"


def assert_optuna_study_matches(folder: Path, study_name: str, trials: pd.DataFrame) -> None:
    optuna = pytest.importorskip("optuna")
    study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{folder / 'optuna.db'}")
    done = {tr.user_attrs["tune_trial_id"]: tr for tr in study.trials if tr.state.name == "COMPLETE"}
    assert sorted(done) == sorted(trials.trial_id)
    for row in trials.itertuples():
        tr = done[row.trial_id]
        assert tr.value == pytest.approx(row.best_val_auc)
        for k, v in tr.params.items():
            assert getattr(row, k) == pytest.approx(v), (row.trial_id, k)


def dashboard_lists_studies(db: Path, names: set[str]) -> None:
    """optuna-dashboard (where installed) serves the stored studies over HTTP on a free local port."""
    import json
    import shutil
    import socket
    import urllib.request

    exe = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent)) or shutil.which("optuna-dashboard")
    if exe is None:
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [exe, f"sqlite:///{db}", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline, body = time.time() + 60, None
        while time.time() < deadline and body is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    body = json.loads(r.read())
            except OSError:
                assert proc.poll() is None, "optuna-dashboard exited"
                time.sleep(0.5)
        assert body is not None, "optuna-dashboard never answered"
        assert {s["study_name"] for s in body["study_summaries"]} == names
    finally:
        proc.kill()
        proc.wait()


def test_killed_trial_and_killed_sweep_resume_without_duplicates(tmp_path, cache_dir, ray_head):
    """Two faults in one sweep of three one-worker CNN trials, one at a time.
    1. The process training the first trial (the Tune trial's own: Ray Train local mode) is SIGKILLed
       after its first reported epoch: Tune starts the trial again from its last checkpoint (full
       training state), so each epoch is reported once and the numbers are those of an uninterrupted
       run with the same seed. (A DDP worker killed: tests/test_multinode.py.)
    2. The driver is SIGKILLed once a trial has finished and the next is under way: the same command
       with --resume finishes the sweep with every trial once and the stored Optuna study continued;
       a second --resume changes nothing."""
    args = ["--preset", "smoke", "--models", "cnn", "--num-samples", "3", "--epochs", "2", "--grace-period", "2"]
    args += ["--no-pretrain", "--max-concurrent", "1", "--name", "k", "--results", str(tmp_path)]
    p = _sweep(*args, cache_dir=cache_dir, cluster=ray_head)
    exp = tmp_path / "k" / "ray" / "k-cnn"
    killed = kill_after_first_report(p, exp)["trial_id"]  # the trial's own process: the worker function runs in it

    def one_done_next_started() -> bool:  # kill the driver once one trial has finished and the next one is under way
        done = any(r["epoch"] == 2 for r in reported(exp))
        return done and len(list(exp.glob("*/result.json"))) >= 2

    wait_until(p, one_done_next_started, "a finished trial with the next one under way")
    os.killpg(p.pid, signal.SIGKILL)  # Ray ends the dead driver's job: its trials stop with it
    p.wait()
    assert not (tmp_path / "k" / "trials.parquet").exists()  # killed before anything was collected
    r = _sweep("--name", "k", "--results", str(tmp_path), "--resume", cache_dir=cache_dir, cluster=ray_head)
    out, _ = r.communicate(timeout=900)
    assert r.returncode == 0, out[-4000:]
    assert "resuming sweep k" in out
    res = read_results(tmp_path / "k")
    assert len(res.trials) == 3 and res.trials.trial_id.is_unique
    assert res.trials.error.isna().all() and res.trials.epochs_run.eq(2).all()
    assert not res.epochs.duplicated(["trial_id", "epoch"]).any()
    assert res.predictions.groupby("trial_id").size().eq(624).all() and res.predictions.trial_id.nunique() == 3
    # --resume continued the same stored Optuna study: its finished trials are the sweep's three
    assert_optuna_study_matches(tmp_path / "k", "k-cnn", res.trials)

    # the killed trial: each epoch once (a restart from scratch reported epoch 1 twice), two processes
    e = res.epochs[res.epochs.trial_id == killed].sort_values("epoch")
    assert e.epoch.tolist() == [1, 2]
    reports = [x for x in reported(exp) if x["trial_id"] == killed]
    assert len({x["worker_started_at"] for x in reports}) == 2, "the worker was not restarted"
    assert len({x["worker_pid"] for x in reports}) == 2 and {x["world_size"] for x in reports} == {1}
    assert all(x["worker_pid"] == x["pid"] for x in reports)  # the job ran in the Tune trial's own process
    # ... and the numbers of the uninterrupted run: the same configuration, seed and threads in this process
    row = res.trials.set_index("trial_id").loc[killed]
    ref = finetune_like_trial(tmp_path, "k", row, threads=int(reports[0]["torch_threads"]))
    assert e.val_auc.tolist() == pytest.approx([h["val_auc"] for h in ref.history], abs=1e-9)
    assert e.train_loss.tolist() == pytest.approx([h["train_loss"] for h in ref.history], abs=1e-9)
    assert row.best_val_auc == pytest.approx(ref.best_val_auc, abs=1e-9)

    # re-collecting (a second --resume of a finished sweep) changes nothing
    before = res.trials.sort_values("trial_id").reset_index(drop=True)
    r2 = _sweep("--name", "k", "--results", str(tmp_path), "--resume", cache_dir=cache_dir, cluster=ray_head)
    out2, _ = r2.communicate(timeout=600)
    assert r2.returncode == 0, out2[-3000:]
    again = read_results(tmp_path / "k")
    after = again.trials.sort_values("trial_id").reset_index(drop=True)
    assert len(after) == 3
    # run.json keeps every session: the killed first run and both resumes
    assert [s["resumed"] for s in again.run["sessions"]] == [False, True, True]
    pd.testing.assert_frame_equal(
        before[["trial_id", "best_val_auc", "test_auc"]], after[["trial_id", "best_val_auc", "test_auc"]]
    )


def test_refuses_to_overwrite_and_bad_models(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "trials.parquet").write_bytes(b"")
    r = subprocess.run(
        [sys.executable, "-m", "study.sweep", "--name", "x", "--results", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "already holds a sweep" in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "study.sweep", "--models", "vgg"], cwd=ROOT, capture_output=True, text=True
    )
    assert r.returncode == 2 and r.stderr.startswith("error: --models vgg: name cnn and/or densenet")


def test_best_checkpoint_is_the_last_reported_one_even_if_the_last_epoch_had_none():
    from types import SimpleNamespace

    from pneumo_ray.distributed.trials import best_checkpoint_path

    df = pd.DataFrame(dict(epoch=[1, 2, 3], checkpoint_path=["/c/1", "/c/2", None]))
    assert best_checkpoint_path(SimpleNamespace(metrics_dataframe=df, metrics={"epoch": 3})) == "/c/2"
    assert best_checkpoint_path(SimpleNamespace(metrics_dataframe=None, metrics={"checkpoint_path": "/c/9"})) == "/c/9"
    none = pd.DataFrame(dict(epoch=[1]))
    assert best_checkpoint_path(SimpleNamespace(metrics_dataframe=none, metrics={})) is None


def test_trial_lines_pickle_after_something_replaced_print(monkeypatch):
    """Tune pickles its callbacks with the experiment. Ray's distributed tqdm replaces builtins.print in
    the driver the first time it shows a worker's line (a race with ray.init: CI saw it); a callback
    holding the original print then failed to pickle and the sweep ended in a traceback."""
    import builtins

    from ray import cloudpickle

    from pneumo_ray.distributed.console import TrialLines

    lines = TrialLines("cnn", epochs=2, num_samples=2, concurrency=1)
    said = []
    monkeypatch.setattr(builtins, "print", lambda *a, **k: said.append(a))
    copy = cloudpickle.loads(cloudpickle.dumps(lines))
    copy.log("a line")
    assert said == [("a line",)]  # print is looked up when a line is written, as Ray replaced it


def test_the_driver_keeps_its_print(monkeypatch):
    """init_ray tells Ray's distributed tqdm not to replace builtins.print (nothing here uses it)."""
    import builtins

    import ray

    from pneumo_ray.distributed import sweep

    # init_ray sets its environment variables in this copy, not in the test session's
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if k != "RAY_TQDM_PATCH_PRINT"})
    monkeypatch.setattr(ray, "init", lambda **kw: None)
    before = builtins.print
    sweep.init_ray("127.0.0.1:1")
    from ray.experimental import tqdm_ray

    monkeypatch.setattr(tqdm_ray, "_manager", None)
    tqdm_ray.instance()  # what Ray's driver calls for the first worker line it prints
    assert builtins.print is before


def test_without_an_address_the_driver_starts_its_own_ray(monkeypatch):
    """No --address and no $RAY_ADDRESS: a new local Ray (with the small-machine settings), never the
    cluster a past `ray start` recorded on this machine (ray.init() without an address joins that one,
    even when it is dead, and then refused the settings in a traceback)."""
    import ray

    from pneumo_ray.distributed import sweep

    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    seen = []
    monkeypatch.setattr(ray, "init", lambda **kw: seen.append(kw))
    sweep.init_ray(None)
    sweep.init_ray("10.0.0.1:6379")
    os.environ["RAY_ADDRESS"] = "10.0.0.2:6379"
    sweep.init_ray(None)
    assert seen[0]["address"] == "local" and "_system_config" in seen[0]
    assert [s["address"] for s in seen[1:]] == ["10.0.0.1:6379", "10.0.0.2:6379"]
    assert not any("_system_config" in s for s in seen[1:])  # a running cluster keeps its own settings


def test_an_epoch_whose_report_never_reached_tune_comes_from_the_checkpoint(tmp_path):
    """A DDP trial's Tune process dies just after Ray Train took epoch 2's report: the restarted trial
    resumes after epoch 2 and Tune records epochs 1 and 3 only (CI saw it). The checkpoint's training
    state holds every epoch: the missing one is filled from there, without a report time."""
    import json
    from types import SimpleNamespace

    import torch
    from safetensors.torch import save_file

    from pneumo_ray.distributed.trials import epochs_with_unreported
    from pneumo_ray.train.checkpoints import STATE_FILE, STATE_FORMAT

    history = [dict(epoch=e, train_loss=1.0 / e, val_auc=0.6 + e / 100, lr=1e-3) for e in (1, 2, 3)]
    ckpt = tmp_path / "checkpoint_3"
    (ckpt / "state").mkdir(parents=True)
    header = {"training_state": json.dumps({"format": STATE_FORMAT, "result": {"history": history}})}
    save_file({"x": torch.zeros(1)}, str(ckpt / "state" / STATE_FILE), metadata=header)
    seen = pd.DataFrame(dict(epoch=[1, 3], train_loss=[1.0, 1 / 3], val_auc=[0.61, 0.63], reported_at=[10.0, 30.0]))
    result = SimpleNamespace(metrics_dataframe=seen.assign(checkpoint_path=[None, str(ckpt)]), metrics={})
    got = epochs_with_unreported(seen, result, SimpleNamespace(experiment_path=str(tmp_path)))
    assert got.epoch.tolist() == [1, 2, 3] and got.val_auc.tolist() == pytest.approx([0.61, 0.62, 0.63])
    assert got.reported_at.isna().tolist() == [False, True, False]
    complete = seen.assign(epoch=[1, 2])
    assert epochs_with_unreported(complete, result, SimpleNamespace(experiment_path=str(tmp_path))) is complete
    # a checkpoint without its training state: the gap stays, with a warning naming it
    (ckpt / "state" / STATE_FILE).unlink()
    with pytest.warns(UserWarning, match="checkpoint_3: the missing ones are not in its training state"):
        kept = epochs_with_unreported(seen, result, SimpleNamespace(experiment_path=str(tmp_path)))
    assert kept.epoch.tolist() == [1, 3]
