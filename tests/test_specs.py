"""The frozen settings that travel from the command line to the Ray workers: DataSpec, OutputSpec,
AblationSpec, TrialSpec; and --resume rebuilding them from run.json (also an older run.json)."""

import dataclasses
import os
import pickle
from pathlib import Path

import pytest

from pneumo_ray.config.arms import AblationSpec, Arm
from pneumo_ray.config.data import DataSpec
from pneumo_ray.config.errors import UserError
from pneumo_ray.config.output import OutputSpec
from pneumo_ray.config.sweep import SweepConfig


def test_data_spec_paths_are_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = DataSpec(data_root="chest_xray", cache_dir=Path("cache"))
    assert spec.data_root == str(tmp_path.resolve() / "chest_xray") and os.path.isabs(spec.cache_dir)
    assert spec.pretrain_root is None
    assert spec.replace(image_size=32).data_root == spec.data_root  # stays absolute through replace
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.image_size = 32


def test_sweep_and_arm_fix_what_the_data_depends_on():
    sweep = SweepConfig(image_size=48, seed=3, val_fraction=0.25, pretrain_epochs=2)
    data = sweep.data_spec(DataSpec(allow_overlap=True))
    assert (data.image_size, data.split_seed, data.val_fraction, data.use_pretrain, data.allow_overlap) == (
        48,
        3,
        0.25,
        True,
        True,
    )
    assert not sweep.replace(pretrain_epochs=0).data_spec(DataSpec()).use_pretrain
    assert not Arm(("no_pretrain",)).data_spec(sweep, DataSpec()).use_pretrain
    assert Arm(allow_overlap=True).data_spec(sweep, DataSpec()).allow_overlap


def test_drivers_refuse_data_that_disagrees_with_the_run():
    from pneumo_ray.distributed.sweep import check_data

    sweep = SweepConfig(image_size=32)
    check_data(sweep.data_spec(DataSpec()), sweep.data_spec(DataSpec()))
    with pytest.raises(ValueError, match=r"image_size=64 \(expected 32\)"):
        check_data(DataSpec(image_size=64), sweep.data_spec(DataSpec()))


def test_ablation_spec_checks():
    assert AblationSpec(seeds=(0, 1), tune=2).protocol == "tune 2"
    assert AblationSpec().protocol == "defaults"
    assert AblationSpec(from_="results/s").protocol == f"from {Path('results/s').resolve()}"
    with pytest.raises(ValueError, match="--tune and --from"):
        AblationSpec(tune=2, from_="results/s")
    with pytest.raises(UserError, match="--seeds: give at least 1 seed"):
        AblationSpec(seeds=())
    with pytest.raises(UserError, match="--seeds 0,0: each seed once"):
        AblationSpec(seeds=(0, 0))
    with pytest.raises(UserError, match="--seeds -1: the seed must be a whole number from 0"):
        AblationSpec(seeds=(-1,))
    with pytest.raises(UserError, match="--tune 0: the search budget must be a whole number, at least 1"):
        AblationSpec(tune=0)


def test_trial_spec_travels_as_it_is(tmp_path):
    """What a Tune trial and its Ray Train workers receive: pickled dataclasses, equal on arrival."""
    from pneumo_ray.distributed.trials import TrialSpec

    sweep = SweepConfig(models=("cnn",))
    spec = TrialSpec(
        base=sweep.base_config("cnn"),
        searched=("aug_strength", "lr"),
        data=sweep.data_spec(DataSpec(cache_dir=tmp_path)),
        source_hash="h",
        store=tmp_path / "pretrain",
        storage=str(tmp_path / "ray"),
        resources=sweep.resources,
    )
    again = pickle.loads(pickle.dumps(spec))
    assert again == spec and again.base.replace(lr=0.5).lr == 0.5 and again.resources.workers == 1


def _old_run_json(tmp_path) -> dict:
    """A sweep's run.json as written before DataSpec (relative data root, no source_subset)."""
    return dict(
        name="s",
        preset="cpu",
        status="running",
        sweep=dict(
            dataclasses.asdict(SweepConfig(image_size=64, pretrain_epochs=2)), aug_range=[0.0, 1.0], models=["cnn"]
        ),
        args=dict(
            data_root="data/chest_xray",
            pretrain_root=None,
            allow_test_overlap=False,
            cache_dir=str(tmp_path / "cache"),
            storage=str(tmp_path / "ray"),
            preset="cpu",
            address=None,
            results=str(tmp_path),
        ),
    )


def test_resume_rebuilds_the_specs_from_run_json(tmp_path, monkeypatch):
    from pneumo_ray.distributed.sweep import run_record, specs_from_run

    monkeypatch.chdir(tmp_path)
    out = OutputSpec(name="s", results=str(tmp_path), resume=True)
    sweep, data, out2 = specs_from_run(_old_run_json(tmp_path), out)
    assert sweep.models == ("cnn",) and sweep.aug_range == (0.0, 1.0) and sweep.image_size == 64
    assert data == DataSpec(
        data_root=str(tmp_path / "data/chest_xray"),
        image_size=64,
        split_seed=0,
        use_pretrain=True,
        cache_dir=str(tmp_path / "cache"),
    )
    assert (out2.storage, out2.preset, out2.resume, out2.name) == (str(tmp_path / "ray"), "cpu", True, "s")
    # what a run writes now reads back to the same settings
    record = dict(sweep=dataclasses.asdict(sweep), args=run_record(data, out2, out2.ray_storage))
    assert specs_from_run(record, out) == (sweep, data, out2)


def test_train_config_stores_python_numbers_not_numpy_scalars():
    """A configuration taken from Parquet (a sweep's best trial) holds numpy scalars; measured, those
    trained to other numbers than the same Python floats, so the config stores Python's own."""
    import numpy as np

    from pneumo_ray.config.train import TrainConfig, stable_id

    from_parquet = TrainConfig(
        lr=np.float64(1e-3),
        aug_strength=np.float64(0.3),
        class_weight_scale=np.float64(1.5),
        class_weight=np.float32(2.0),
        epochs=np.int64(3),
        freeze_backbone=np.bool_(False),
    )
    typed = TrainConfig(lr=1e-3, aug_strength=0.3, class_weight_scale=1.5, class_weight=2.0, epochs=3)
    for name, kind in (("lr", float), ("aug_strength", float), ("class_weight", float), ("epochs", int)):
        assert type(getattr(from_parquet, name)) is kind, name
    assert type(from_parquet.freeze_backbone) is bool
    assert from_parquet == typed and stable_id(from_parquet.to_dict()) == stable_id(typed.to_dict())
    assert from_parquet.replace(lr=np.float64(3e-4)).lr.__class__ is float  # replace goes through the same check
