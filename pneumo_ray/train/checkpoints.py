"""Weights as safetensors + a JSON sidecar (config, data hashes, normalization): nothing is unpickled."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from pneumo_ray.storage.atomic import atomic_write


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
