"""Weights as safetensors + a JSON sidecar (config, data hashes, normalization), and the full
training state that resumes a phase (`TrainingState`: tensors in safetensors, the rest JSON).
Nothing is pickled, so nothing is ever unpickled."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from pneumo_ray.storage.atomic import atomic_write
from pneumo_ray.train.augment import Normalize
from pneumo_ray.train.loop import FitResult, Phase, RandomState, TrainingState


def save_weights(path: str | os.PathLike, state: dict, meta: dict) -> Path:
    """Write `path` (.safetensors) and `path` with .json, each atomically (temp + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))
    atomic_write(
        path.with_suffix(".json"), lambda tmp: tmp.write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    )
    return path


def load_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    side = path.with_suffix(".json")
    meta = json.loads(side.read_text()) if side.exists() else {}
    return load_file(str(path)), meta


def load_into(model: torch.nn.Module, path: str | os.PathLike) -> dict:
    """Load weights into `model` (shapes must match exactly); returns the metadata."""
    state, meta = load_weights(path)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"{path}: weights do not fit this model: {str(e).splitlines()[1:3]}") from e
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not fit this model (missing {missing[:5]}, unexpected {unexpected[:5]})")
    return meta


# --- the full training state (resume after a killed worker) -----------------------------------------

STATE_FILE = "training_state.safetensors"  # tensors + the JSON part in its header: one atomic file
STATE_SIDECAR = "training_state.json"  # the same JSON, beside it, for people and tools (not read back)
STATE_FORMAT = 1


def _json_number(o: object) -> object:
    if hasattr(o, "item"):  # numpy / torch scalars in the history
        return o.item()
    raise TypeError(f"training state: {type(o).__name__} is not JSON (tensors go to safetensors)")


def _state_parts(state: TrainingState) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors for safetensors, everything else as JSON-ready values)."""
    tensors = {f"model/{k}": v for k, v in state.model.items()}
    opt_json: dict = {"param_groups": state.optimizer["param_groups"], "state": {}}
    for idx, per_param in state.optimizer["state"].items():
        opt_json["state"][str(idx)] = {k: v for k, v in per_param.items() if not isinstance(v, torch.Tensor)}
        tensors.update({f"optimizer/{idx}/{k}": v for k, v in per_param.items() if isinstance(v, torch.Tensor)})
    r = state.result
    if r.best_state is not None:
        tensors.update({f"best_state/{k}": v for k, v in r.best_state.items()})
    if state.ema is not None:
        tensors.update({f"ema/{k}": v for k, v in state.ema.items()})
    if r.best_val_probs is not None:
        tensors["best_val_probs"] = torch.from_numpy(np.asarray(r.best_val_probs, np.float64))
    rng = state.rng
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = rng.numpy
    py_version, py_ints, py_gauss = rng.python
    tensors["rng/cpu"] = rng.cpu
    if rng.cuda is not None:
        tensors["rng/cuda"] = rng.cuda
    tensors["rng/numpy"] = torch.from_numpy(np.asarray(np_keys, np.int64))
    tensors["rng/python"] = torch.tensor(py_ints, dtype=torch.int64)
    meta = dict(
        format=STATE_FORMAT,
        phase=dataclasses.asdict(state.phase),
        world=state.world,
        epoch=state.epoch,
        has_ema=state.ema is not None,
        optimizer=opt_json,
        scheduler=state.scheduler,
        rng=dict(numpy=[np_name, np_pos, np_has_gauss, np_gauss], python=[py_version, py_gauss]),
        result=dict(
            history=r.history,
            best_epoch=r.best_epoch,
            best_val_auc=r.best_val_auc,
            normalize=dict(mean=r.normalize.mean, std=r.normalize.std),
            weights=list(r.weights),
            threshold=r.threshold,
            has_best_state=r.best_state is not None,
        ),
    )
    return tensors, meta


def save_training_state(folder: str | os.PathLike, state: TrainingState) -> Path:
    """Write `state` to `folder`/training_state.safetensors (every tensor; the rest as JSON in its
    header) in one atomic write, and the JSON again beside it for reading. Nothing is pickled.
    Returns the .safetensors path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors, meta = _state_parts(state)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    text = json.dumps(meta, indent=1, sort_keys=True, default=_json_number)
    path = atomic_write(
        folder / STATE_FILE, lambda tmp: save_file(tensors, str(tmp), metadata={"training_state": text})
    )
    atomic_write(folder / STATE_SIDECAR, lambda tmp: tmp.write_text(text))
    return path


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def _optimizer_state(tensors: dict[str, torch.Tensor], saved: dict) -> dict:
    state: dict[int, dict] = {int(i): dict(rest) for i, rest in saved["state"].items()}
    for key, v in _prefixed(tensors, "optimizer/").items():
        idx, name = key.split("/", 1)
        state.setdefault(int(idx), {})[name] = v
    # JSON has no tuples: put back the ones the optimizer made (betas), so the state compares equal
    groups = [
        {k: (v if k == "params" or not isinstance(v, list) else tuple(v)) for k, v in g.items()}
        for g in saved["param_groups"]
    ]
    return {"state": dict(sorted(state.items())), "param_groups": groups}


def _state_header(path: Path) -> dict:
    """The JSON part of the training state at `path` (its safetensors header; no tensor is read)."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no training state")
    with safe_open(str(path), "pt") as f:
        text = (f.metadata() or {}).get("training_state")
    if text is None:
        raise ValueError(f"{path}: not a training state (no 'training_state' in its header)")
    meta = json.loads(text)
    if meta.get("format") != STATE_FORMAT:
        raise ValueError(f"{path}: training state format {meta.get('format')}, this code reads {STATE_FORMAT}")
    return meta


def training_history(folder: str | os.PathLike) -> list[dict]:
    """The per-epoch records of the TrainingState in `folder`, read from its header alone."""
    return _state_header(Path(folder) / STATE_FILE)["result"]["history"]


def load_training_state(folder: str | os.PathLike) -> TrainingState:
    """The TrainingState that save_training_state wrote to `folder` (tensors on the CPU)."""
    path = Path(folder) / STATE_FILE
    meta = _state_header(path)
    tensors = load_file(str(path))
    r = meta["result"]
    probs = tensors.get("best_val_probs")
    np_name, np_pos, np_has_gauss, np_gauss = meta["rng"]["numpy"]
    py_version, py_gauss = meta["rng"]["python"]
    rng = RandomState(
        cpu=tensors["rng/cpu"],
        cuda=tensors.get("rng/cuda"),
        numpy=(np_name, tensors["rng/numpy"].numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss),
        python=(py_version, tuple(tensors["rng/python"].tolist()), py_gauss),
    )
    result = FitResult(
        history=r["history"],
        best_state=_prefixed(tensors, "best_state/") if r["has_best_state"] else None,
        best_epoch=r["best_epoch"],
        best_val_auc=r["best_val_auc"],
        normalize=Normalize(**r["normalize"]),
        weights=tuple(r["weights"]),
        best_val_probs=probs.numpy() if probs is not None else None,
        threshold=r["threshold"],
    )
    return TrainingState(
        phase=Phase(**meta["phase"]),
        world=meta["world"],
        epoch=meta["epoch"],
        model=_prefixed(tensors, "model/"),
        optimizer=_optimizer_state(tensors, meta["optimizer"]),
        scheduler=meta["scheduler"],
        rng=rng,
        result=result,
        ema=_prefixed(tensors, "ema/") if meta.get("has_ema") else None,
    )
