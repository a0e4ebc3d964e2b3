"""The GPU path on the CPU: sets held on the device (`resident=True`) give the numbers of the host
path, bit for bit; a training step never reads a value back from the device (the loss is summed
there and read once an epoch); `compile=True` trains through torch.compile(model); and the GPU
check (bench/gpu_check.py) still runs, in its CPU mode."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pneumo_ray.config.data import DataSpec
from pneumo_ray.data.study_data import load_study_data
from pneumo_ray.train import device_data, loop
from pneumo_ray.train.augment import Augment, Normalize
from pneumo_ray.train.device_data import ResidentSet, batches, on_device
from pneumo_ray.train.loop import Phase, epoch_order, fit, make_optimizer, predict, train_one_epoch
from pneumo_ray.train.models import build_model

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[1]
LOOP_FILES = {loop.__file__, device_data.__file__}  # the loop and its batches (augmentation has its CPU kernel)
PHASE = Phase(name="finetune", epochs=2, lr=3e-3, batch_size=16, aug_strength=0.5, seed=3)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    data = load_study_data(
        DataSpec(image_size=32, split_seed=0, cache_dir=tmp_path_factory.mktemp("c"), use_pretrain=False),
        quiet=True,
        log=None,
    )
    data.train = data.train.subset(np.arange(3, 120, 1), "train")  # 117 rows: a short last batch
    data.val = data.val.subset(np.arange(50), "val")
    return data


def test_resident_batches_are_the_host_batches(tiny):
    resident = ResidentSet(tiny.train, CPU)
    assert resident.nbytes == len(tiny.train) * 32 * 32
    order = epoch_order(len(tiny.train), 16, seed=1, epoch=2)
    pairs = zip(batches(tiny.train, order, CPU), batches(resident, order, CPU), strict=True)
    for (x_host, y_host), (x_dev, y_dev) in pairs:
        assert torch.equal(x_host, x_dev) and torch.equal(y_host, y_dev)
        assert x_dev.dtype == torch.uint8 and y_dev.dtype == torch.float32
    assert isinstance(on_device(tiny.train, CPU), type(tiny.train))  # auto: resident on CUDA only
    assert isinstance(on_device(tiny.train, CPU, resident=True), ResidentSet)


def _run(data, **kw):
    torch.manual_seed(0)
    model = build_model("cnn")
    result = fit(model, data.train, data.val, PHASE, device=CPU, progress=False, log=None, **kw)
    return model, result


def test_resident_path_gives_the_same_numbers(tiny):
    host_model, host = _run(tiny, resident=False)
    dev_model, dev = _run(tiny, resident=True)
    keys = ("train_loss", "val_loss", "val_auc", "lr", "best_epoch")
    assert [[h[k] for k in keys] for h in host.history] == [[h[k] for k in keys] for h in dev.history]
    assert all(torch.equal(v, dev_model.state_dict()[k]) for k, v in host_model.state_dict().items())
    assert np.array_equal(host.best_val_probs, dev.best_val_probs)


SYNCS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__")


@pytest.fixture
def reads_from_the_loop(monkeypatch):
    """Counts the device reads (Tensor.item, .cpu(), float(t), ...) made by the loop's own code (loop.py,
    device_data.py): each one waits for the device on CUDA. torch's internals (e.g. the optimizer's
    step count, a CPU tensor even on CUDA) and the augmentation's CPU kernel are not counted."""
    counts: dict[str, int] = {}
    for name in SYNCS:
        original = getattr(torch.Tensor, name)

        def counting(self, *a, _name=name, _original=original, **kw):
            if sys._getframe(1).f_code.co_filename in LOOP_FILES:
                counts[_name] = counts.get(_name, 0) + 1
            return _original(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, name, counting)
    return counts


@pytest.mark.parametrize("resident", [False, True])
def test_no_device_read_per_step(tiny, reads_from_the_loop, resident):
    model = build_model("cnn")
    data = on_device(tiny.train, CPU, resident)
    optimizer, scheduler = make_optimizer(model, PHASE, 100)
    kw = dict(augment=Augment(0.5), normalize=Normalize(0.5, 0.25), weights=(2.0, 1.0), device=CPU, seed=1)
    rec = train_one_epoch(model, data, optimizer, scheduler, batch_size=16, epoch=1, **kw)
    assert rec["train_images"] == 117  # 8 steps
    assert reads_from_the_loop == {"item": 1}  # the epoch's loss, once
    reads_from_the_loop.clear()
    rec = train_one_epoch(model, data, optimizer, scheduler, batch_size=4, epoch=2, **kw)  # 30 steps
    assert reads_from_the_loop == {"item": 1}
    reads_from_the_loop.clear()
    predict(model, on_device(tiny.val, CPU, resident), normalize=Normalize(0.5, 0.25), device=CPU, batch_size=8)
    assert reads_from_the_loop == {"cpu": 1, "numpy": 1}  # 7 batches, read once at the end


def test_progress_line_reads_the_loss_only_when_written(tiny, reads_from_the_loop, capsys):
    model = build_model("cnn")
    optimizer, scheduler = make_optimizer(model, PHASE, 100)
    kw = dict(augment=Augment(0.5), normalize=Normalize(0.5, 0.25), weights=(2.0, 1.0), device=CPU, seed=1)
    train_one_epoch(model, tiny.train, optimizer, scheduler, batch_size=16, epoch=1, progress="ft", **kw)
    assert reads_from_the_loop["item"] <= 2  # the last line (done == total) and the epoch's loss
    err = capsys.readouterr().err
    assert "ft: 100%" in err and "117/117" in err and "loss=" in err, err


def test_compile_trains_through_torch_compile(tiny, monkeypatch):
    """The wiring only (a real compile of even the small CNN takes minutes on this CPU; bench/gpu_check.py
    --compile measures it on a GPU): the training steps go through what torch.compile returned."""
    compiled = []

    def fake_compile(model: torch.nn.Module, **kw) -> object:
        def forward(x: torch.Tensor) -> torch.Tensor:
            compiled.append(len(x))
            return model(x)

        return forward

    monkeypatch.setattr(torch, "compile", fake_compile)
    _, plain = _run(tiny)
    _, result = _run(tiny, compile=True)
    assert sum(compiled) == 2 * 117  # every training image of both epochs; evaluation stays eager
    assert [h["train_loss"] for h in result.history] == [h["train_loss"] for h in plain.history]


def test_compile_mode_is_checked():
    model = build_model("cnn")
    assert loop.compiled(model, False) is model and loop.compiled(model, None) is model
    with pytest.raises(ValueError, match="compile mode 'fast'"):
        loop.compiled(model, "fast")


def test_study_train_compile_runs(tmp_path, cache_dir):
    """`python -m study.train --compile` as a user types it, with a real torch.compile on the CPU (it
    crashed on every machine: `forward or model` asked the compiled module for its len()). Inductor
    writes its generated kernels to TORCHINDUCTOR_CACHE_DIR: they prove the steps ran compiled."""
    inductor = tmp_path / "inductor"
    cmd = [sys.executable, "-m", "study.train", "--image-size", "32", "--epochs", "1", "--no-pretrain", "--compile"]
    cmd += ["--out", str(tmp_path / "out"), "--cache-dir", str(cache_dir)]
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(inductor)}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert 0.0 <= metrics["test_auc"] <= 1.0 and metrics["val_auc"] > 0.5
    assert list(inductor.rglob("*.py")), "torch.compile generated no kernels"


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    return gpu_check


def test_gpu_check_compiles_on_the_cpu(tmp_path, capsys, monkeypatch):
    """bench/gpu_check.py --compile (it crashed as study.train did), in the mode a GPU uses for small
    batches (reduce-overhead: CUDA graphs there; on the CPU inductor alone)."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    argv = ["--quick", "--synthetic", "--device", "cpu", "--models", "cnn", "--compile", "reduce-overhead"]
    assert _gpu_check().main([*argv, "--cache-dir", str(tmp_path), "--json", str(tmp_path / "o")]) == 0
    assert "torch.compile reduce-overhead" in capsys.readouterr().out
    figures = json.loads((tmp_path / "o").read_text())
    assert set(figures["results"]) == {"cnn"} and figures["results"]["cnn"]["loop"]["rate"] > 0
    assert list((tmp_path / "inductor").rglob("*.py")), "torch.compile generated no kernels"


def test_gpu_check_shares_the_device(tmp_path, capsys):
    """--share N: N processes train the same model at once on the one device (Ray's fractional GPUs) and
    their images/s are summed; here on the CPU, two of them."""
    argv = ["--quick", "--synthetic", "--device", "cpu", "--models", "cnn", "--share", "2"]
    assert _gpu_check().main([*argv, "--cache-dir", str(tmp_path), "--json", str(tmp_path / "o")]) == 0
    share = json.loads((tmp_path / "o").read_text())["results"]["cnn"]["share"]["2"]
    assert len(share["each"]) == 2 and all(r > 0 for r in share["each"]) and share["total"] == sum(share["each"])
    assert "2 process(es) on one device" in capsys.readouterr().out


def test_gpu_check_runs_on_the_cpu(tmp_path, capsys):
    """bench/gpu_check.py's CPU mode on tiny settings, so that the GPU check does not rot between GPU runs."""
    gpu_check = _gpu_check()
    threads = torch.get_num_threads()
    argv = ["--quick", "--synthetic", "--device", "cpu", "--cache-dir", str(tmp_path), "--json", str(tmp_path / "o")]
    assert gpu_check.main(argv) == 0
    assert torch.get_num_threads() == threads  # --quick's one thread was for the check only
    out = capsys.readouterr().out
    assert out.startswith("no GPU: CPU figures") and "data: synthetic phantoms" in out
    figures = json.loads((tmp_path / "o").read_text())
    assert set(figures["results"]) == {"cnn", "densenet"}
    for r in figures["results"].values():
        assert r["loop"]["rate"] > 0 and r["data_free"]["rate"] > 0 and r["ratio"] > 0
        assert r["loop"]["syncs"] is None and not r["loop"]["resident"]  # CPU: host path, no CUDA syncs
    assert {row["model"] for row in figures["gpu_hours"]} == {"cnn", "densenet"}
    assert all(row["total_exp_h"] > 0 for row in figures["gpu_hours"])


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--startup-s", "-5"], "--startup-s"),
        (["--gpus", "0"], "--gpus"),
        (["--eval-speedup", "nan"], "--eval-speedup"),
        (["--source-val", "1"], "--source-val"),
        (["--img-per-s", "cnn=abc"], "--img-per-s"),
    ],
)
def test_gpu_hours_refuses_a_bad_value_in_one_line(argv, flag, capsys):
    """bench/gpu_hours.py turns nonsense (negative set-up seconds, no GPUs, NaN) into one usage error
    naming the flag, never into an estimate."""
    spec = importlib.util.spec_from_file_location("gpu_hours", ROOT / "bench" / "gpu_hours.py")
    gpu_hours = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_hours)
    with pytest.raises(SystemExit) as e:
        gpu_hours.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and flag in err[-1] and "error:" in err[-1]
