import numpy as np
import pytest
import torch

from pneumo_ray.config.data import DataSpec
from pneumo_ray.config.train import TrainConfig, stable_id
from pneumo_ray.data.study_data import load_study_data
from pneumo_ray.train import checkpoints
from pneumo_ray.train.loop import Phase, class_weights, epoch_order, fit, pick_device
from pneumo_ray.train.models import build_model
from pneumo_ray.train.protocol import final_evaluation, finetune, pretrain, pretrain_key


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Synthetic study data at 32 px, trimmed so a CPU epoch takes about a second."""
    data = load_study_data(
        DataSpec(image_size=32, split_seed=0, cache_dir=tmp_path_factory.mktemp("c")), quiet=True, log=None
    )
    data.train = data.train.subset(np.arange(256), "train")
    data.val = data.val.subset(np.arange(128), "val")
    data.source = data.source.subset(np.arange(256), "source")
    return data


def test_class_weights():
    assert class_weights([0, 1, 1, 1], "auto") == (3.0, 1.0)
    assert class_weights([0, 1], 2.5) == (2.5, 1.0)
    with pytest.raises(ValueError, match="both classes"):
        class_weights([1, 1], "auto")


def test_epoch_order_shards_equal_and_disjoint():
    shards = [np.concatenate(epoch_order(103, 10, seed=1, epoch=2, rank=r, world=3)) for r in range(3)]
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) == 34
    assert len(set(np.concatenate(shards))) == 102
    assert not np.array_equal(np.concatenate(epoch_order(50, 10, 1, 1)), np.concatenate(epoch_order(50, 10, 1, 2)))


def test_same_seed_same_numbers_on_cpu(tiny):
    def run():
        torch.manual_seed(0)
        model = build_model("cnn")
        r = fit(
            model,
            tiny.train,
            tiny.val,
            Phase(name="finetune", epochs=2, lr=1e-3, aug_strength=0.5, seed=7),
            device=torch.device("cpu"),
            progress=False,
            log=None,
        )
        return [h["train_loss"] for h in r.history] + [h["val_auc"] for h in r.history]

    assert run() == run()


def test_best_validation_epoch_is_kept(tiny):
    torch.manual_seed(0)
    seen = []
    r = fit(
        build_model("cnn"),
        tiny.train,
        tiny.val,
        Phase(name="finetune", epochs=3, lr=3e-3, seed=1),
        device=torch.device("cpu"),
        on_epoch=lambda rec, m, res: seen.append(rec["val_auc"]),
        progress=False,
        log=None,
    )
    assert len(seen) == 3 and r.best_epoch == int(np.argmax(seen)) + 1 and r.best_val_auc == max(seen)


def test_pretrain_weights_roundtrip_and_threshold_from_validation(tiny, tmp_path):
    cfg = TrainConfig(model="cnn", image_size=32, epochs=1, pretrain_epochs=1)
    dev = pick_device("cpu")
    state, meta = pretrain(cfg, tiny, dev, log=None)
    assert meta["key"] == pretrain_key(cfg, tiny.info["source_manifest_hash"], meta["conditions"])
    cond = meta["conditions"]
    assert pretrain_key(cfg.replace(lr=0.5, aug_strength=0.9), "h", cond) == pretrain_key(cfg, "h", cond)  # fine-tune
    assert pretrain_key(cfg.replace(pretrain_lr=0.5), "h", cond) != pretrain_key(cfg, "h", cond)
    path = checkpoints.save_weights(tmp_path / "w.safetensors", state, meta)
    loaded, meta2 = checkpoints.load_weights(path)
    assert meta2["key"] == meta["key"] and all(torch.equal(state[k], loaded[k]) for k in state)
    model, result = finetune(cfg, tiny, dev, init_state=loaded, log=None)
    metrics, preds = final_evaluation(cfg, tiny, result, dev)
    assert len(preds) == len(tiny.test) == 624
    # the threshold is the loss's equal-prior rule (inverse-frequency weights → 0.5), fixed before any
    # score is seen; validation and test use it unchanged
    assert metrics["val_threshold"] == metrics["test_threshold"] == metrics["threshold"] == pytest.approx(0.5)
    assert ((preds.probability >= metrics["threshold"]).astype(int) == preds.prediction).all()
    assert metrics["test_tp"] + metrics["test_fn"] == int(preds.label.sum())


def test_weights_must_fit(tmp_path):
    state = build_model("cnn").state_dict()
    path = checkpoints.save_weights(tmp_path / "cnn.safetensors", state, {})
    with pytest.raises(ValueError, match="do not fit"):
        checkpoints.load_into(build_model("densenet"), path)


def test_stable_id():
    assert stable_id({"a": 1, "b": [1, 2]}) == stable_id({"b": [1, 2], "a": 1})
    assert stable_id({"a": 1}) != stable_id({"a": 2})
