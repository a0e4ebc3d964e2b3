"""study.ablate: arms over seeds on a real local Ray, idempotent rows, paired statistics."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import wait_until

from pneumo_ray.analysis.verdicts import summarize
from pneumo_ray.config.arms import Arm
from pneumo_ray.config.sweep import SweepConfig
from pneumo_ray.distributed.replicates import base_configs

ROOT = Path(__file__).resolve().parents[1]


def _ablate(*args, cache_dir, cluster=None):
    """study.ablate; with `cluster` (the `ray_head` fixture) it joins that Ray."""
    env = {**(cluster[1] if cluster else os.environ), "PNEUMO_RAY_CACHE": str(cache_dir), "RAY_DEDUP_LOGS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "study.ablate", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )


def test_smoke_ablation_two_arms_each_tuned_on_its_own(tmp_path, ray_head, capsys):
    common = [
        "--preset",
        "smoke",
        "--models",
        "cnn",
        "--seeds",
        "2",
        "--epochs",
        "1",
        "--tune",
        "2",
        "--name",
        "abl",
        "--results",
        str(tmp_path),
    ]
    cache = tmp_path / "cache"
    r1 = _ablate(*common, cache_dir=cache, cluster=ray_head)
    assert r1.returncode == 0, (r1.stdout + r1.stderr)[-4000:]
    r2 = _ablate(*common, "--no-pretrain", "--ensemble", cache_dir=cache, cluster=ray_head)
    assert r2.returncode == 0, (r2.stdout + r2.stderr)[-4000:]
    out = tmp_path / "abl"
    abl = pd.read_parquet(out / "ablations.parquet")
    assert sorted(zip(abl.arm, abl.seed)) == [("no-pretrain", 0), ("no-pretrain", 1), ("transfer", 0), ("transfer", 1)]
    assert abl.error.isna().all() and abl.test_auc.between(0, 1).all() and abl.val_auc.between(0.5, 1).all()
    cfgs = {r.arm: json.loads(r.config) for r in abl.itertuples()}
    assert cfgs["transfer"]["pretrain_epochs"] == 1 and cfgs["no-pretrain"]["pretrain_epochs"] == 0
    t = abl[abl.arm == "transfer"]
    assert t.pretrain_key.nunique() == 2  # one pre-training per seed
    assert abl[abl.arm == "no-pretrain"].pretrain_key.isna().all()
    # each arm ran its own search (same budget, its own free hyper-parameters) and runs at its own best
    tuning = pd.read_parquet(out / "ablation_tuning.parquet")
    assert tuning.groupby("arm").size().to_dict() == {"no-pretrain": 2, "transfer": 2}
    assert tuning[tuning.arm == "no-pretrain"]["pretrain_lr"].isna().all()  # nothing to pre-train: not searched
    assert tuning.test_auc.isna().all()  # tuning never looks at test
    for arm, g in abl.groupby("arm"):
        assert (g.tuned_for == arm).all() and g.config_source.str.startswith(f"tuned for {arm}: trial ").all()
        mine = tuning[tuning.arm == arm]
        best = mine.loc[mine.best_val_auc.idxmax()]
        assert best.trial_id in g.config_source.iloc[0]
        for k in ("aug_strength", "class_weight_scale", "lr"):
            assert cfgs[arm][k] == pytest.approx(best[k])
        # the decision threshold is the loss's rule for the arm's own class weight
        assert g.test_threshold.to_numpy() == pytest.approx(1 / (1 + cfgs[arm]["class_weight_scale"]))
    preds = pd.read_parquet(out / "ablation_predictions.parquet")
    assert len(preds) == 4 * 624 and preds.groupby(["arm", "seed"]).size().eq(624).all()
    s = pd.read_parquet(out / "ablation_summary.parquet")
    vs = s[s.kind == "vs_transfer"].iloc[0]
    assert vs.arm == "no-pretrain" and vs.n_seeds == 2 and vs.n_test == 624
    assert vs.auc_diff_ci_low <= vs.auc_diff <= vs.auc_diff_ci_high and 0 < vs.p_value <= 1
    assert vs.p_holm == vs.p_value and vs.n_compared == 1 and pd.isna(vs.warning)
    assert 0 <= vs.p_delong_fixed_models <= 1 and vs.verdict.startswith("no-pretrain vs transfer (cnn): ")
    assert "each arm vs transfer" in r2.stdout and vs.verdict in r2.stdout
    assert (s[s.kind == "arm"].test_auc_ci_covers == "seeds and test images").all()
    audit = pd.read_parquet(out / "audit_summary.parquet")
    leak = audit[(audit.a_set == "pretraining") & audit.b_set.isin(["target-val", "target-test"])]
    assert len(leak) == 2 and (leak["any"] == 0).all()
    # re-running an arm with the same seeds adds nothing and trains nothing (its search is reused)
    check_arm_ensemble(out, r2.stdout, ["no-pretrain"])
    r3 = _ablate(*common, "--ensemble", "2", cache_dir=cache, cluster=ray_head)
    assert r3.returncode == 0 and "nothing to run" in r3.stdout
    assert len(pd.read_parquet(out / "ablations.parquet")) == 4
    check_arm_ensemble(out, r3.stdout, ["no-pretrain", "transfer"], cache)  # built from the tables, no training
    # other settings under the same name are refused before any work: lengths, or another protocol
    r4 = _ablate(
        *common[:-8],
        "--epochs",
        "2",
        "--tune",
        "2",
        "--name",
        "abl",
        "--results",
        str(tmp_path),
        "--no-augment",
        cache_dir=cache,
    )
    assert r4.returncode == 2 and "other settings" in r4.stderr and "epochs" in r4.stderr
    r4b = _ablate(*common[:-6], "--name", "abl", "--results", str(tmp_path), "--no-augment", cache_dir=cache)
    assert r4b.returncode == 2 and "config_protocol" in r4b.stderr
    r5 = _ablate("--summarize", str(out), cache_dir=cache)
    assert r5.returncode == 0 and "p_holm" in r5.stdout and "verdicts:" in r5.stdout
    assert "rows differ in" not in r5.stderr  # every row made under the same conditions
    # what made each row, in every table
    from test_sweep import assert_provenance_filled

    run = json.loads((out / "run.json").read_text())
    assert_provenance_filled(abl, run)
    assert_provenance_filled(tuning, run)
    assert abl[abl.arm == "transfer"].pretrain_computed.notna().all()
    # --summarize says so when rows were made under other conditions: one line per condition
    pd.concat([abl, abl.iloc[:1].assign(seed=9, torch_threads=2)]).to_parquet(out / "ablations.parquet")
    r6 = _ablate("--summarize", str(out), cache_dir=cache)
    assert (
        r6.returncode == 0
        and f"warning: {out / 'ablations.parquet'}: rows differ in torch_threads: 1 (4 rows)" in r6.stderr
    )
    abl.to_parquet(out / "ablations.parquet")
    # one seed trained again from the run record in plain PyTorch: bit for bit; with a changed weight
    # in its checkpoint, not
    from study import common, reproduce

    assert common.run_main(reproduce.main, [str(out), "--seed", "1"]) == 0
    said = capsys.readouterr().out
    assert "agrees: bit-exact" in said and "pre-training epoch 1 train_loss" in said
    best = Path(abl.set_index(["arm", "seed"]).loc[("transfer", 1), "checkpoint_path"]) / "best.safetensors"
    from pneumo_ray.train import checkpoints

    state, meta = checkpoints.load_weights(best)
    state["classifier.3.bias"] += 1e-4
    checkpoints.save_weights(best, state, meta)
    assert common.run_main(reproduce.main, [str(out), "--seed", "1"]) == 1
    said = capsys.readouterr().out
    assert "DISAGREES: largest difference" in said and "weights up to 0.0001 apart" in said
    assert "checkpoint's own test probability" in said  # the changed weights' predictions are not the recorded
    assert common.run_main(reproduce.main, [str(out), "--seed", "1", "--tolerance", "0.5"]) == 0  # a loose bound


def check_arm_ensemble(out, stdout: str, arms: list[str], cache=None) -> None:
    """An arm's ensemble of its seeds (--ensemble): chosen from ablation_val_predictions.parquet, printed
    beside the arm's mean over seeds. With `cache`: study.ensemble gives a seed that lost its validation
    predictions the same ones again from its checkpoint (no training, no Ray)."""
    val = pd.read_parquet(out / "ablation_val_predictions.parquet")
    assert val.groupby(["arm", "seed"]).size().nunique() == 1 and len(val.groupby(["arm", "seed"])) == 4
    ens = pd.read_parquet(out / "ensemble.parquet")
    assert sorted(ens.arm) == arms and (ens.candidates == "seed").all() and ens.k.between(1, 2).all()
    assert ens.n_candidates.eq(2).all() and (ens.n_test == 624).all()
    assert "ensembles chosen on validation" in stdout and "arm's mean of 2 seeds (ablation summary)" in stdout
    if cache is None:
        return
    kept = val[~((val.arm == "transfer") & (val.seed == 1))]
    kept.to_parquet(out / "ablation_val_predictions.parquet")
    r = subprocess.run(
        [sys.executable, "-m", "study.ensemble", str(out), "--n-boot", "200"],
        cwd=ROOT,
        env={**os.environ, "PNEUMO_RAY_CACHE": str(cache)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "1 checkpoint(s) without validation predictions" in r.stdout
    again = pd.read_parquet(out / "ablation_val_predictions.parquet")
    key = ["arm", "model", "seed", "path"]
    pd.testing.assert_frame_equal(
        again.sort_values(key).reset_index(drop=True)[val.columns],
        val.sort_values(key).reset_index(drop=True),
        check_exact=True,
    )


def test_tune_and_from_are_exclusive(tmp_path):
    r = _ablate("--tune", "2", "--from", str(tmp_path), "--results", str(tmp_path), cache_dir=tmp_path / "c")
    assert r.returncode == 2 and "--tune and --from" in r.stderr


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
    best = pd.DataFrame(
        [
            dict(
                model="cnn",
                trial_id="t7",
                best_val_auc=0.97,
                aug_strength=0.2,
                class_weight_scale=1.5,
                lr=4e-4,
                pretrain_lr=3e-3,
            )
        ]
    )
    cfgs = base_configs(SweepConfig(models=("cnn",), epochs=3), best, "results/s", tuned_for="transfer")
    cfg, origin = cfgs["cnn"].config, cfgs["cnn"].source
    assert (cfg.aug_strength, cfg.class_weight_scale, cfg.lr, cfg.pretrain_lr, cfg.epochs) == (0.2, 1.5, 4e-4, 3e-3, 3)
    assert "t7" in origin and cfgs["cnn"].tuned_for == "transfer"
    assert base_configs(SweepConfig(models=("cnn",)), None, None)["cnn"].tuned_for is None
    with pytest.raises(ValueError, match="no finished densenet"):
        base_configs(SweepConfig(models=("densenet",)), best, "results/s")


def _fake_ablation(arms, n=200, seed=0):
    """Rows and predictions of arms {name: (signal, seeds, tuned_for)} on one test set of n images."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    rows, preds = [], []
    for arm, (shift, seeds, tuned_for) in arms.items():
        for s in seeds:
            p = 1 / (1 + np.exp(-(rng.normal(0, 1, n) + shift * (2 * y - 1))))
            rows.append(
                dict(
                    arm=arm,
                    model="cnn",
                    seed=s,
                    error=None,
                    test_auc=0.5,
                    test_accuracy=0.5,
                    test_sensitivity=0.5,
                    test_specificity=0.5,
                    test_f1=0.5,
                    test_balanced_accuracy=0.5,
                    val_auc=0.6,
                    tuned_for=tuned_for,
                    config_source=f"src-{tuned_for}",
                )
            )
            preds.append(
                pd.DataFrame(
                    dict(arm=arm, model="cnn", seed=s, path=[f"img{i}" for i in range(n)], label=y, probability=p)
                ).sample(frac=1, random_state=s)
            )  # any order
    return pd.DataFrame(rows), pd.concat(preds)


def test_summary_pairs_seeds_and_images():
    rows, preds = _fake_ablation(
        {"transfer": (2.0, [0, 1, 2], "transfer"), "no-pretrain": (0.3, [0, 1], "no-pretrain")}
    )
    s = summarize(rows, preds)
    vs = s[s.kind == "vs_transfer"].iloc[0]
    assert vs.seeds == "0,1" and vs.n_seeds == 2  # only seeds both arms have
    assert vs.auc_diff < -0.1 and vs.auc_diff_ci_high < 0 and vs.p_value < 0.05 and vs.p_delong_fixed_models < 0.01
    assert vs.verdict.startswith("no-pretrain vs transfer (cnn): transfer better by ") and pd.isna(vs.warning)
    arms = s[s.kind == "arm"].set_index("arm")
    assert arms.loc["transfer", "n_seeds"] == 3
    # test AUC: from the predictions, interval over seeds and test images; the others: seeds only
    assert arms.loc["transfer", "test_auc_ci_covers"] == "seeds and test images"
    assert arms.loc["transfer", "test_auc_ci_low"] < arms.loc["transfer", "test_auc_mean"] < 1
    assert arms.loc["transfer", "test_accuracy_mean"] == 0.5


def test_summary_holm_over_arms_and_fairness_warning():
    rows, preds = _fake_ablation(
        {
            "transfer": (1.0, [0, 1, 2], "transfer"),
            "no-pretrain": (1.0, [0, 1, 2], "transfer"),
            "no-augment": (0.6, [0, 1, 2], "no-augment"),
        }
    )
    s = summarize(rows, preds)
    vs = s[s.kind == "vs_transfer"].set_index("arm")
    assert (vs.n_compared == 2).all()
    p = vs.p_value.sort_values()  # Holm with two comparisons
    assert vs.loc[p.index[0], "p_holm"] == pytest.approx(min(1, max(2 * p.iloc[0], 0)))
    assert vs.loc[p.index[1], "p_holm"] == pytest.approx(min(1, max(2 * p.iloc[0], p.iloc[1])))
    assert "no-pretrain runs at a configuration tuned for transfer" in vs.loc["no-pretrain", "warning"]
    assert "warning: no-pretrain runs at a configuration tuned for transfer" in vs.loc["no-pretrain", "verdict"]
    assert pd.isna(vs.loc["no-augment", "warning"])


def test_ablation_summary_and_report_show_an_ingredient_arm_with_balanced_accuracy():
    """The ablation summary compares "transfer+ema-0.999" with transfer like any arm and shows balanced
    accuracy beside accuracy, with the same kind of interval."""
    from pneumo_ray.analysis.verdicts import format_summary
    from pneumo_ray.report.tables import arm_table

    rows, preds = _fake_ablation(
        {"transfer": (1.0, [0, 1, 2], "transfer"), "transfer+ema-0.999": (1.5, [0, 1, 2], None)}
    )
    rows["test_balanced_accuracy"] = np.where(rows.arm == "transfer", 0.7, 0.8) + 0.01 * rows.seed
    s = summarize(rows, preds)
    arms = s[s.kind == "arm"].set_index("arm")
    assert arms.loc["transfer+ema-0.999", "test_balanced_accuracy_mean"] == pytest.approx(0.81)
    ci = arms.loc["transfer", ["test_balanced_accuracy_ci_low", "test_balanced_accuracy_ci_high"]]
    assert ci.iloc[0] < 0.71 < ci.iloc[1]
    text = format_summary(s)
    assert "balanced acc." in text and "0.810 [" in text
    assert "transfer+ema-0.999 vs transfer (cnn): " in text
    table = arm_table(s)
    assert list(table.columns[3:6]) == ["test AUC", "accuracy", "balanced accuracy"]
    assert pd.Series(table["balanced accuracy"]).str.startswith("0.810 [").any()


def test_summarize_names_a_damaged_table(tmp_path):
    (tmp_path / "ablations.parquet").write_bytes(b"PAR1 truncated")
    r = _ablate("--summarize", str(tmp_path), cache_dir=tmp_path / "c")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {tmp_path / 'ablations.parquet'}: damaged or not a Parquet table")


def test_killed_ablation_resumes_with_each_seed_once(tmp_path, cache_dir, ray_head):
    """Kill study.ablate's driver once a seed has finished and the next is under way; the same command
    with --resume completes the arm: every seed once, none trained twice to completion."""
    import signal

    args = ["--preset", "smoke", "--models", "cnn", "--seeds", "3", "--epochs", "2", "--no-pretrain"]
    args += ["--max-concurrent", "1", "--name", "ak", "--results", str(tmp_path)]
    env = {**ray_head[1], "PNEUMO_RAY_CACHE": str(cache_dir)}
    p = subprocess.Popen(
        [sys.executable, "-m", "study.ablate", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    ray_dir = tmp_path / "ak" / "ray"

    def one_seed_done_next_started() -> bool:
        # a seed is done when it reported its 2 epochs (a trial run to its end writes no "done": true)
        results = list(ray_dir.glob("no-pretrain-cnn-seeds-*/*/result.json"))
        done = [f for f in results if len(f.read_text().splitlines()) >= 2]
        return bool(done) and len(list(ray_dir.glob("no-pretrain-cnn-seeds-*/trial_fn_*"))) >= 2

    wait_until(p, one_seed_done_next_started, "a finished seed with the next one under way")
    os.killpg(p.pid, signal.SIGKILL)  # Ray ends the dead driver's job: its trials stop with it
    p.wait()
    assert not (tmp_path / "ak" / "ablations.parquet").exists()  # killed before any row was collected
    r = _ablate(*args, "--resume", cache_dir=cache_dir, cluster=ray_head)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    abl = pd.read_parquet(tmp_path / "ak" / "ablations.parquet")
    assert sorted(abl.seed) == [0, 1, 2] and abl.error.isna().all() and abl.test_auc.between(0, 1).all()
    run = json.loads((tmp_path / "ak" / "run.json").read_text())
    assert [s["resumed"] for s in run["sessions"]] == [False, True]
