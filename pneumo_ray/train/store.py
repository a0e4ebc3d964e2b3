"""The content-addressed pre-training store: `<cache_dir>/pretrain/<key>.safetensors` (+ `.json`).

The key (protocol.pretrain_key) holds the pre-training's configuration, its source images and the
conditions it trains under (conditions.training_conditions: torch version, device, threads, code,
...), so trials that would train the same weights share one entry. An entry is read back only when
its recorded conditions equal the reader's and its weights hash to the digest recorded when it was
written: an entry from before conditions were recorded, one copied in from another machine or one
whose weights were changed is never reused silently; `check` says why, and the caller computes it
again (and overwrites it). `<key>.partial/` holds the training state of a computation under way (a
restarted job resumes it), `<key>.lock` the lock the job computing it holds.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from pneumo_ray.train import checkpoints
from pneumo_ray.train.conditions import describe, differences


def folder(cache_dir: str | Path) -> Path:
    """The store of the decoded-image cache `cache_dir` (the sweep and ablation drivers put it there)."""
    return Path(cache_dir) / "pretrain"


@dataclass(frozen=True)
class Entry:
    """Where one key's files are."""

    weights: Path  # <key>.safetensors (its metadata beside it: <key>.json)
    partial: Path  # <key>.partial/: the training state of an interrupted computation
    lock: Path  # <key>.lock

    @staticmethod
    def of(store: Path, key: str) -> Entry:
        store = Path(store)
        return Entry(store / f"{key}.safetensors", store / f"{key}.partial", store / f"{key}.lock")


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 (16 hex digits) of a state dict's names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def check(entry: Entry, conditions: dict) -> str | None:
    """Why the stored entry cannot be used under `conditions` (None: it can; also None when there is
    no entry). Reads the metadata and weights."""
    if not entry.weights.exists():
        return None
    try:
        state, meta = checkpoints.load_weights(entry.weights)
    except Exception as e:  # noqa: BLE001 - a damaged file of any kind is a reason to compute again
        return f"unreadable ({type(e).__name__}: {str(e)[:120]})"
    if "conditions" not in meta:
        return "made before the store recorded its conditions"
    diff = differences(meta["conditions"], conditions)
    if diff:
        return f"made under other conditions ({describe(diff)})"
    if meta.get("weights_digest") != weights_digest(state):
        return "its weights differ from those recorded when it was written (changed or damaged)"
    return None


def read(entry: Entry, conditions: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """(weights, metadata) of the entry; ValueError naming it when `check` refuses it."""
    problem = check(entry, conditions)
    if problem is not None:
        raise ValueError(f"pre-training store entry {entry.weights}: {problem}; not reused")
    return checkpoints.load_weights(entry.weights)


def write(entry: Entry, state: dict[str, torch.Tensor], meta: dict, conditions: dict) -> Path:
    """Store the weights with `meta` plus the conditions they were trained under and their digest."""
    return checkpoints.save_weights(
        entry.weights, state, {**meta, "conditions": conditions, "weights_digest": weights_digest(state)}
    )
