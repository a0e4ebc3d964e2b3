"""A killed worker costs at most one epoch: `fit(on_state=...)` hands out the full training state
every epoch, `checkpoints.save_training_state` writes it (safetensors + JSON), and a fresh process
that loads it and calls `fit(resume=...)` ends where the uninterrupted run ends, bit for bit on the
CPU: weights, optimizer moments, per-epoch losses and validation AUCs, best epoch and weights."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from pneumo_ray.config.data import DataSpec
from pneumo_ray.config.train import TrainConfig
from pneumo_ray.data.study_data import load_study_data
from pneumo_ray.train import checkpoints
from pneumo_ray.train.loop import FitResult, Phase, TrainingState, fit
from pneumo_ray.train.models import build_model
from pneumo_ray.train.protocol import finetune, pretrain

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
TIMING = {"train_seconds", "train_images_per_s", "epoch_seconds"}  # wall-clock: never equal twice
PHASE = Phase(name="finetune", epochs=3, lr=3e-3, aug_strength=0.5, hflip=True, seed=5)


def tiny_data(cache_dir: Path):
    """Synthetic study data at 32 px, trimmed so that an epoch takes well under a second."""
    data = load_study_data(DataSpec(image_size=32, split_seed=0, cache_dir=cache_dir), quiet=True, log=None)
    data.train = data.train.subset(np.arange(128), "train")
    data.val = data.val.subset(np.arange(64), "val")
    data.source = data.source.subset(np.arange(160), "source")
    return data


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("c")


@pytest.fixture(scope="module")
def tiny(cache):
    return tiny_data(cache)


class Killed(Exception):
    """What the worker's death looks like from inside: the epoch's state is saved, then nothing."""


def save_then_die(folder: Path, at_epoch: int):
    def on_state(state: TrainingState) -> None:
        checkpoints.save_training_state(folder / f"epoch-{state.epoch}", state)
        if state.epoch == at_epoch:
            raise Killed

    return on_state


def history(result: FitResult) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in TIMING} for h in result.history]


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def assert_same_result(a: FitResult, b: FitResult) -> None:
    assert history(a) == history(b)
    assert (a.best_epoch, a.best_val_auc, a.normalize, a.weights, a.threshold) == (
        b.best_epoch,
        b.best_val_auc,
        b.normalize,
        b.weights,
        b.threshold,
    )
    assert same_tensors(a.best_state, b.best_state)
    assert np.array_equal(a.best_val_probs, b.best_val_probs)


def run_fit(data, **kw) -> tuple[torch.nn.Module, FitResult]:
    torch.manual_seed(0)
    model = build_model("cnn")  # has dropout: the global torch stream matters
    return model, fit(model, data.train, data.val, PHASE, device=CPU, progress=False, log=None, **kw)


@pytest.fixture(scope="module")
def uninterrupted(tiny) -> tuple[torch.nn.Module, FitResult, list[TrainingState]]:
    """The reference: PHASE run through in one go, with the state it handed out after each epoch."""
    states = []
    model, result = run_fit(tiny, on_state=states.append)
    return model, result, states


def test_state_roundtrips_through_disk(uninterrupted, tmp_path):
    _, _, states = uninterrupted
    assert [s.epoch for s in states] == [1, 2, 3]
    s = states[1]
    back = checkpoints.load_training_state(checkpoints.save_training_state(tmp_path, s).parent)
    assert (back.phase, back.world, back.epoch, back.scheduler) == (s.phase, s.world, s.epoch, s.scheduler)
    assert same_tensors(back.model, s.model)
    assert back.optimizer["param_groups"] == s.optimizer["param_groups"]
    assert back.optimizer["state"].keys() == s.optimizer["state"].keys()
    assert all(same_tensors(back.optimizer["state"][i], s.optimizer["state"][i]) for i in s.optimizer["state"])
    assert torch.equal(back.rng.cpu, s.rng.cpu) and back.rng.python == s.rng.python
    assert back.rng.numpy[0] == s.rng.numpy[0] and np.array_equal(back.rng.numpy[1], s.rng.numpy[1])
    assert back.rng.numpy[2:] == s.rng.numpy[2:]
    assert_same_result(back.result, s.result)
    assert len(s.result.history) == 2  # the state's result is a snapshot: later epochs did not touch it
    assert (tmp_path / checkpoints.STATE_SIDECAR).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("stop_after", [1, 2])
def test_fit_resumed_from_disk_equals_uninterrupted(tiny, uninterrupted, tmp_path, stop_after):
    """A fresh model and optimizer (other seed, other global random state) resume from the file.
    The resumed run's on_epoch also draws from every global stream: fit puts them back after its
    callbacks, else the draws would shift dropout and the run would differ."""
    model_full, full, states = uninterrupted
    folder = tmp_path / "state"
    checkpoints.save_training_state(folder, states[stop_after - 1])
    seen = []

    def on_epoch(rec: dict, model: torch.nn.Module, result: FitResult) -> None:
        seen.append(rec["epoch"])
        torch.rand(7), np.random.rand(3), random.random()

    torch.manual_seed(123)
    np.random.seed(123)
    model = build_model("cnn")
    resumed = fit(
        model,
        tiny.train,
        tiny.val,
        PHASE,
        device=CPU,
        resume=checkpoints.load_training_state(folder),
        on_epoch=on_epoch,
        progress=False,
        log=None,
    )
    assert seen == list(range(stop_after + 1, PHASE.epochs + 1))
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]  # each epoch exactly once
    assert same_tensors(model.state_dict(), model_full.state_dict())
    assert_same_result(resumed, full)


def test_resume_after_the_last_epoch_trains_nothing(tiny, uninterrupted):
    model_full, full, states = uninterrupted
    model = build_model("cnn")
    done = fit(model, tiny.train, tiny.val, PHASE, device=CPU, resume=states[-1], progress=False, log=None)
    assert_same_result(done, full)
    assert same_tensors(model.state_dict(), model_full.state_dict())


def test_resume_refuses_another_phase_or_world(tiny, uninterrupted):
    state = uninterrupted[2][0]
    other = Phase(**{**PHASE.__dict__, "lr": 1e-3})
    with pytest.raises(ValueError, match="not of Phase"):
        fit(build_model("cnn"), tiny.train, tiny.val, other, device=CPU, resume=state, progress=False, log=None)
    with pytest.raises(ValueError, match="worker"):
        fit(build_model("cnn"), tiny.train, tiny.val, PHASE, device=CPU, world=2, resume=state, progress=False)


def _protocol_cfg() -> TrainConfig:
    return TrainConfig(model="cnn", image_size=32, epochs=2, pretrain_epochs=2, batch_size=32)


@pytest.fixture(scope="module")
def protocol_runs(tiny):
    """pretrain → finetune, uninterrupted: (pre-trained state, its metadata, fine-tuned model, FitResult)."""
    cfg = _protocol_cfg()
    pre_state, pre_meta = pretrain(cfg, tiny, CPU, log=None)
    model, result = finetune(cfg, tiny, CPU, init_state=pre_state, log=None)
    return pre_state, pre_meta, model, result


def test_pretrain_and_finetune_resume(tiny, protocol_runs, tmp_path):
    """Both phases of the protocol, each killed after epoch 1 and resumed in fresh objects."""
    cfg = _protocol_cfg()
    pre_state, pre_meta, model_full, full = protocol_runs
    with pytest.raises(Killed):
        pretrain(cfg, tiny, CPU, on_state=save_then_die(tmp_path / "pre", 1), log=None)
    state2, meta2 = pretrain(
        cfg, tiny, CPU, resume=checkpoints.load_training_state(tmp_path / "pre" / "epoch-1"), log=None
    )
    assert same_tensors(state2, pre_state)
    strip = lambda meta: [{k: v for k, v in h.items() if k not in TIMING} for h in meta["history"]]  # noqa: E731
    assert strip(meta2) == strip(pre_meta) and [h["epoch"] for h in meta2["history"]] == [1, 2]
    assert meta2["key"] == pre_meta["key"]

    with pytest.raises(Killed):
        finetune(cfg, tiny, CPU, init_state=pre_state, on_state=save_then_die(tmp_path / "ft", 1), log=None)
    resume = checkpoints.load_training_state(tmp_path / "ft" / "epoch-1")
    model, resumed = finetune(cfg, tiny, CPU, init_state=pre_state, resume=resume, log=None)
    assert same_tensors(model.state_dict(), model_full.state_dict())
    assert_same_result(resumed, full)


CHILD = """
import os, sys
from pathlib import Path
import torch
sys.path.insert(0, {root!r})
sys.path.insert(0, {tests!r})
from test_resume import _protocol_cfg, tiny_data
from pneumo_ray.train import checkpoints
from pneumo_ray.train.protocol import finetune

def on_state(state):
    checkpoints.save_training_state(Path({out!r}), state)
    if state.epoch == 1:
        os._exit(17)  # killed: no clean-up, no exception handling

init, _ = checkpoints.load_weights({init!r})
data = tiny_data(Path({cache!r}))
finetune(_protocol_cfg(), data, torch.device("cpu"), init_state=init, on_state=on_state, log=None)
"""


def test_finetune_killed_in_a_subprocess_resumes_here(tiny, cache, protocol_runs, tmp_path):
    """The worker process dies (os._exit) right after saving epoch 1; this process resumes from disk."""
    cfg = _protocol_cfg()
    pre_state, pre_meta, model_full, full = protocol_runs
    init_path = checkpoints.save_weights(tmp_path / "init.safetensors", pre_state, pre_meta)
    child = CHILD.format(
        root=str(ROOT), tests=str(ROOT / "tests"), out=str(tmp_path / "state"), init=str(init_path), cache=str(cache)
    )
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(child)], capture_output=True, text=True)
    assert proc.returncode == 17, proc.stderr[-3000:]
    state = checkpoints.load_training_state(tmp_path / "state")
    assert state.epoch == 1
    init, _ = checkpoints.load_weights(init_path)
    model, resumed = finetune(cfg, tiny, CPU, init_state=init, resume=state, log=None)
    assert same_tensors(model.state_dict(), model_full.state_dict())
    assert_same_result(resumed, full)
