"""Reproducibility without Ray: which conditions change the numbers (and so are in the pre-training
store's key), which do not (tested here to stay so), the store's refusal of an entry made under other
recorded conditions, and the provenance helpers that every result row goes through."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from pneumo_ray.config.data import DataSpec
from pneumo_ray.config.train import TrainConfig
from pneumo_ray.data.study_data import load_study_data
from pneumo_ray.storage import provenance
from pneumo_ray.train import store
from pneumo_ray.train.augment import Augment, Normalize, to_float
from pneumo_ray.train.conditions import training_conditions
from pneumo_ray.train.loop import predict
from pneumo_ray.train.models import build_model
from pneumo_ray.train.protocol import pretrain_key

CPU = torch.device("cpu")


@pytest.fixture
def threads():
    """Set torch's thread count inside a test; put back afterwards."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def real_images(kermany_root, tmp_path_factory):
    data = load_study_data(
        DataSpec(
            data_root=str(kermany_root), image_size=64, use_pretrain=False, cache_dir=tmp_path_factory.mktemp("c")
        ),
        quiet=True,
        log=None,
    )
    return data.test


def test_augmentation_kernel_gives_the_same_bits_at_any_thread_count(real_images, threads):
    """The fused C kernel gives each image to one OpenMP thread: 1, 2, 3 or 8 threads, the same bits
    (so a trial's CPU count changes the augmentation of no image)."""
    x = to_float(torch.from_numpy(real_images.batch(np.arange(96))))
    outs = []
    for n in (1, 2, 3, 8):
        threads(n)
        outs.append(Augment(0.5)(x, torch.Generator().manual_seed(5), Normalize(0.5, 0.25)))
    assert all(torch.equal(outs[0], o) for o in outs[1:])


def test_evaluation_is_the_same_at_any_thread_count(real_images, threads):
    """A model's test probabilities do not depend on torch's threads: the driver's test evaluation (the
    machine's threads) equals the trial's own (its CPUs) bit for bit. Another batching of the same
    images can move a probability by one float32 rounding step (measured 6e-8 on 1 of 624 images at
    batch 50, 11 at batch 1); the evaluation always batches the test set the same way (128, in order)."""
    torch.manual_seed(0)
    model = build_model("cnn")
    probs = {}
    for n in (1, 2, 4):
        threads(n)
        for batch in (128, 50):
            probs[n, batch] = predict(model, real_images, normalize=Normalize(0.5, 0.25), device=CPU, batch_size=batch)
    for batch in (128, 50):
        assert all(np.array_equal(probs[1, batch], probs[n, batch]) for n in (2, 4)), batch
    assert np.abs(probs[1, 128] - probs[1, 50]).max() <= 2e-7


def test_training_conditions_are_in_the_pretraining_key(threads):
    """The key holds torch's thread count (oneDNN splits a convolution's weight-gradient sum over the
    threads: 1 and 2 threads train to other weights), the CPU model and kernels (AVX2 and AVX512 train
    to other weights), the device, torch's version, the augmentation path and the code."""
    cfg = TrainConfig(model="cnn", image_size=32, pretrain_epochs=1)
    threads(1)
    one = training_conditions(CPU)
    threads(2)
    two = training_conditions(CPU)
    assert (one["threads"], two["threads"]) == (1, 2) and one["torch"] == torch.__version__
    assert one["code"] and len(one["code"]) == 16 and one["augment"] in ("c-kernel", "opencv") and one["cpu"]
    assert pretrain_key(cfg, "h", one) != pretrain_key(cfg, "h", two)
    others = (("torch", "0.0"), ("device", "cuda"), ("code", "0" * 16), ("world", 2), ("augment", "opencv"))
    for k, v in (*others, ("cpu", "another CPU"), ("cpu_capability", "AVX2"), ("onednn_max_isa", "AVX2")):
        assert pretrain_key(cfg, "h", {**one, k: v}) != pretrain_key(cfg, "h", one), k
    assert pretrain_key(cfg, "h", dict(one)) == pretrain_key(cfg, "h", one)


def _state() -> dict:
    torch.manual_seed(0)
    return build_model("cnn").state_dict()


def test_store_refuses_an_entry_made_under_other_recorded_conditions(tmp_path, threads):
    threads(1)
    here = training_conditions(CPU)
    entry = store.Entry.of(tmp_path, "k")
    assert store.check(entry, here) is None  # no entry: nothing to refuse (the caller computes it)
    store.write(entry, _state(), {"key": "k"}, {**here, "threads": 2})
    reason = store.check(entry, here)
    assert reason == "made under other conditions (threads 2 → 1)"
    with pytest.raises(ValueError, match=r"k.safetensors: made under other conditions \(threads 2 → 1\); not reused"):
        store.read(entry, here)
    # the same conditions: used, weights as written
    store.write(entry, _state(), {"key": "k"}, here)
    assert store.check(entry, here) is None
    weights, meta = store.read(entry, here)
    assert meta["conditions"] == here and all(torch.equal(weights[k], v) for k, v in _state().items())


def test_store_refuses_an_entry_without_conditions_or_with_changed_weights(tmp_path, threads):
    from pneumo_ray.train import checkpoints

    here = training_conditions(CPU)
    entry = store.Entry.of(tmp_path, "k")
    checkpoints.save_weights(entry.weights, _state(), {"key": "k"})  # as the store wrote them before
    assert store.check(entry, here) == "made before the store recorded its conditions"
    store.write(entry, _state(), {"key": "k"}, here)
    state, meta = checkpoints.load_weights(entry.weights)
    state["classifier.3.bias"] += 1e-6
    checkpoints.save_weights(entry.weights, state, meta)  # a changed weight, the metadata kept
    assert "its weights differ from those recorded" in store.check(entry, here)
    entry.weights.write_bytes(b"garbage")
    assert store.check(entry, here).startswith("unreadable")


def test_provenance_lines_name_each_differing_condition():
    rows = pd.DataFrame(
        dict(
            arm=["transfer"] * 4,
            model=["cnn"] * 4,
            seed=[0, 1, 2, 3],
            torch_threads=[1, 1, 1, 2],
            code_commit=["a"] * 4,
            train_code=["c"] * 3 + [None],
        )
    )
    lines = provenance.differing(rows, ["arm", "model", "seed"])
    assert lines == [
        "rows differ in torch_threads: 1 (3 rows), 2 (1 row: transfer/cnn/3)",
        "rows differ in train_code: c (3 rows), not recorded (1 row: transfer/cnn/3)",
    ]
    assert provenance.differing(rows.iloc[:3], ["arm"]) == []
    assert provenance.differing(pd.DataFrame(dict(seed=[0, 1]))) == [
        "no provenance recorded for its 2 row(s) (written before it was recorded)"
    ]
    summary = provenance.summary_of(rows)
    assert summary["torch_threads"] == "1 (3 rows), 2 (1 rows)" and summary["code_commit"] == "a"
    assert summary["device"] == "–"


def test_run_provenance_names_the_code_and_requirements():
    info = dict(train_manifest_hash="t", val_manifest_hash="v", test_manifest_hash="x")
    run = provenance.run_provenance(info)
    assert run["code_commit"] is None or len(run["code_commit"]) == 40
    assert isinstance(run["code_dirty"], (bool, type(None))) and len(run["requirements_sha256"]) == 16
    assert run["ray_version"] and run["optuna_version"] and run["data_manifest_hash"]
    assert provenance.target_manifest_hash({**info, "source_manifest_hash": "s"}) == run["data_manifest_hash"]
    stamped = provenance.stamp([{"seed": 0}], run)
    assert set(provenance.RUN_COLUMNS) <= set(stamped[0])


def test_training_code_digest_follows_the_code_that_trains(tmp_path, monkeypatch):
    """An edit to the loop (or any training or data module) changes the digest, and so every key; an
    edit to the store's bookkeeping does not."""
    import shutil

    from pneumo_ray.train import conditions

    copy = tmp_path / "pneumo_ray"
    shutil.copytree(conditions.PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(conditions, "PACKAGE", copy)

    def digest() -> str:
        conditions.training_code_digest.cache_clear()
        return conditions.training_code_digest()

    try:
        first = digest()
        with (copy / "train" / "store.py").open("a") as f:
            f.write("# a comment\n")
        assert digest() == first
        with (copy / "train" / "loop.py").open("a") as f:
            f.write("# a comment\n")
        assert digest() != first
    finally:
        conditions.training_code_digest.cache_clear()
