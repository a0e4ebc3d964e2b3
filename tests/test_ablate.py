"""study.ablate: arms over seeds on a real local Ray, idempotent rows, paired statistics."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pneumo_ray.ablation import Arm, base_configs
from pneumo_ray.ablation_summary import summarize
from pneumo_ray.tuning import SweepConfig

ROOT = Path(__file__).resolve().parents[1]


def _ablate(*args, cache_dir):
    env = {**os.environ, "PNEUMO_RAY_CACHE": str(cache_dir), "RAY_DEDUP_LOGS": "1"}
    return subprocess.run([sys.executable, "-m", "study.ablate", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)


@pytest.fixture
def ray_cleanup():
    yield
    subprocess.run(["ray", "stop", "--force"], capture_output=True, timeout=120,
                   env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})


def test_smoke_ablation_two_arms(tmp_path, ray_cleanup):
    common = ["--preset", "smoke", "--models", "cnn", "--seeds", "2", "--epochs", "1", "--name", "abl",
              "--results", str(tmp_path)]
    cache = tmp_path / "cache"
    r1 = _ablate(*common, cache_dir=cache)
    assert r1.returncode == 0, (r1.stdout + r1.stderr)[-4000:]
    r2 = _ablate(*common, "--no-pretrain", cache_dir=cache)
    assert r2.returncode == 0, (r2.stdout + r2.stderr)[-4000:]
    out = tmp_path / "abl"
    abl = pd.read_parquet(out / "ablations.parquet")
    assert sorted(zip(abl.arm, abl.seed)) == [("no-pretrain", 0), ("no-pretrain", 1), ("transfer", 0), ("transfer", 1)]
    assert abl.error.isna().all() and abl.test_auc.between(0, 1).all() and abl.val_auc.between(0.5, 1).all()
    cfgs = {r.arm: json.loads(r.config) for r in abl.itertuples()}
    assert cfgs["transfer"]["pretrain_epochs"] == 1 and cfgs["no-pretrain"]["pretrain_epochs"] == 0
    t = abl[abl.arm == "transfer"]
    assert t.pretrain_key.nunique() == 2 and t.pretrain_computed.all()       # one pre-training per seed
    assert abl[abl.arm == "no-pretrain"].pretrain_key.isna().all()
    assert (abl.config_source == "defaults").all()
    preds = pd.read_parquet(out / "ablation_predictions.parquet")
    assert len(preds) == 4 * 624 and preds.groupby(["arm", "seed"]).size().eq(624).all()
    s = pd.read_parquet(out / "ablation_summary.parquet")
    vs = s[s.kind == "vs_transfer"].iloc[0]
    assert vs.arm == "no-pretrain" and vs.n_seeds == 2 and vs.n_test == 624
    assert vs.auc_diff_ci_low <= vs.auc_diff <= vs.auc_diff_ci_high and 0 < vs.p_bootstrap <= 1 and 0 <= vs.p_delong <= 1
    assert "each arm vs transfer" in r2.stdout and "no-pretrain" in r2.stdout
    audit = pd.read_parquet(out / "audit_summary.parquet")
    leak = audit[(audit.a_set == "pretraining") & audit.b_set.isin(["target-val", "target-test"])]
    assert len(leak) == 2 and (leak["any"] == 0).all()
    # re-running an arm with the same seeds adds nothing and trains nothing
    r3 = _ablate(*common, cache_dir=cache)
    assert r3.returncode == 0 and "nothing to run" in r3.stdout
    assert len(pd.read_parquet(out / "ablations.parquet")) == 4
    # other settings under the same name are refused before any work
    r4 = _ablate(*common[:-4], "--epochs", "2", "--name", "abl", "--results", str(tmp_path), "--no-augment",
                 cache_dir=cache)
    assert r4.returncode == 2 and "other settings" in r4.stderr and "epochs" in r4.stderr
    r5 = _ablate("--summarize", str(out), cache_dir=cache)
    assert r5.returncode == 0 and "p (DeLong)" in r5.stdout


def test_arm_names_and_changes():
    assert Arm().name == "transfer"
    a = Arm(("no_augment", "no_class_weights"))
    assert a.name == "no-augment+no-class-weights"
    cfg = a.apply(SweepConfig().base_config("cnn"))
    assert cfg.aug_strength == 0 and cfg.pretrain_aug_strength == 0 and cfg.class_weight == 1.0
    assert Arm(allow_overlap=True).name == "transfer+test-overlap"
    with pytest.raises(ValueError, match="no-pretrain"):
        Arm(("no_pretrain",), allow_overlap=True)


def test_configuration_from_sweep_best_trial():
    best = pd.DataFrame([dict(model="cnn", trial_id="t7", best_val_auc=0.97, aug_strength=0.2, class_weight_scale=1.5,
                              lr=4e-4, pretrain_lr=3e-3)])
    cfgs = base_configs(SweepConfig(models=("cnn",), epochs=3), best, "results/s")
    cfg, origin = cfgs["cnn"]
    assert (cfg.aug_strength, cfg.class_weight_scale, cfg.lr, cfg.pretrain_lr, cfg.epochs) == (0.2, 1.5, 4e-4, 3e-3, 3)
    assert "t7" in origin
    with pytest.raises(ValueError, match="no finished densenet"):
        base_configs(SweepConfig(models=("densenet",)), best, "results/s")


def test_summary_pairs_seeds_and_images():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    rows, preds = [], []
    for arm, shift, seeds in (("transfer", 2.0, [0, 1, 2]), ("no-pretrain", 0.3, [0, 1])):
        for seed in seeds:
            p = 1 / (1 + np.exp(-(rng.normal(0, 1, 200) + shift * (2 * y - 1))))
            rows.append(dict(arm=arm, model="cnn", seed=seed, error=None, test_auc=0.5, test_accuracy=0.5,
                             test_sensitivity=0.5, test_specificity=0.5, test_f1=0.5, test_balanced_accuracy=0.5,
                             val_auc=0.6))
            preds.append(pd.DataFrame(dict(arm=arm, model="cnn", seed=seed, path=[f"img{i}" for i in range(200)],
                                           label=y, probability=p)).sample(frac=1, random_state=seed))  # any order
    s = summarize(pd.DataFrame(rows), pd.concat(preds), n_boot=300)
    vs = s[s.kind == "vs_transfer"].iloc[0]
    assert vs.seeds == "0,1" and vs.n_seeds == 2                 # only seeds both arms have
    assert vs.auc_diff < -0.1 and vs.auc_diff_ci_high < 0 and vs.p_delong < 0.01
    arms = s[s.kind == "arm"].set_index("arm")
    assert arms.loc["transfer", "n_seeds"] == 3 and arms.loc["transfer", "test_auc_mean"] == 0.5
