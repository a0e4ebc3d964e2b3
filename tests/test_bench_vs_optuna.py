"""bench/vs_optuna.py's plain-Optuna half (no Ray) on tiny settings, so that the comparison does not
rot between the runs that time it."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _bench(monkeypatch):
    spec = importlib.util.spec_from_file_location("vs_optuna", ROOT / "bench" / "vs_optuna.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_plain_optuna_half_runs(tmp_path, capsys, monkeypatch):
    vs_optuna = _bench(monkeypatch)
    threads, cache_env = torch.get_num_threads(), os.environ.get("PNEUMO_RAY_CACHE")
    argv = ["--only", "optuna", "--setting", "smoke", "--num-samples", "1", "--epochs", "1", "--pretrain-epochs", "1"]
    argv += ["--image-size", "16", "--cache-dir", str(tmp_path / "cache"), "--json", str(tmp_path / "figures.json")]
    assert vs_optuna.main(argv) == 0
    assert torch.get_num_threads() == threads and os.environ.get("PNEUMO_RAY_CACHE") == cache_env  # put back
    out = capsys.readouterr().out
    assert "warmed before timing either side" in out and "needs both halves" in out
    [figures] = json.loads((tmp_path / "figures.json").read_text())
    assert figures["setting"] == "smoke" and figures["ratio"] is None
    plain = figures["sides"]["plain Optuna"]
    assert plain["trials"] == 1 and plain["pretrainings"] == 1 and plain["torch_threads"] == 1
    assert 0 < plain["finetune_epochs_s"] < plain["wall_s"] and plain["pretrain_epochs_s"] > 0
    assert 0 <= plain["best_val_auc"] <= 1 and 0 <= plain["test_auc_of_best"] <= 1
    assert not (tmp_path / "cache" / "pretrain").exists()  # the shared cache got no pre-trained weights
