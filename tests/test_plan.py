"""The seed plan (`study.ablate --plan`, analysis/power.py, analysis/plan.py): the promised power against
simulated ablations (the generator of bench/seed_planning.py, fixed seed), the plan through the command
a user types on a small ablation folder written directly as Parquet (no Ray), the report's table, and
bad input as one error line."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pneumo_ray.analysis import power as pw
from pneumo_ray.analysis.plan import seed_plans
from pneumo_ray.analysis.stats import structural_components

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("seed_planning", ROOT / "bench" / "seed_planning.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclass looks its module up there
    spec.loader.exec_module(mod)
    return mod


def run(*args, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


# --- the power computation ----------------------------------------------------------------------


def test_promised_power_matches_simulated_studies():
    """Paired regime of the real data, true ΔAUC 0.005, K = 5: the power promised from the components
    that pilots measure against 300 simulated studies through the primary test itself."""
    sp = _bench()
    rng = np.random.default_rng(7)
    regime = next(r for r in sp.REGIMES if r.name == "paired")
    mu_b = sp.mu_for_auc(sp.TARGET_AUC, omega=regime.omega)
    auc_b = sp.population_auc(mu_b, omega=regime.omega)
    mu_a = sp.mu_for_auc(auc_b + 0.005, omega=regime.omega)
    comps = sp.true_components(rng, mu_a, mu_b, regime, n=30, k0=10)
    promised = pw.power(comps, 0.005, 5)
    simulated = sp.significant(rng, 5, mu_a, mu_b, regime, 300).mean()
    print(f"promised {promised:.3f}, simulated {simulated:.3f}")
    assert 0.2 < simulated < 0.8  # a cell where a wrong variance shows
    assert abs(promised - simulated) <= 0.08  # 300 studies: ±0.03 (1 SE) at 0.5, plus the components' noise
    # the test can fail: leaving out the seed-to-seed variance (DeLong alone) promises far too much
    assert pw.power(dataclasses.replace(comps, seed=0.0), 0.005, 5) - simulated > 0.2


def _components(**kw) -> pw.Components:
    return pw.Components(
        **{"seed": 2e-4, "test_shared": 1e-6, "test_per_seed": 1.4e-5, "n_seeds": 3, "n_test": 624, **kw}
    )


def test_seeds_needed_is_the_first_k_with_80_percent():
    c = _components()
    k = pw.seeds_needed(c, 0.01)
    assert k is not None and pw.power(c, 0.01, k) >= 0.8 > pw.power(c, 0.01, k - 1)
    assert pw.power(c, 0.01, 3) < pw.power(c, 0.01, 10) < pw.power(c, 0.02, 10)  # rises with K and ΔAUC


def test_shared_test_variance_caps_the_power():
    """V_c does not shrink with seeds: when it alone leaves less than 80 %, no K is named."""
    c = _components(test_shared=3.3e-5)
    assert pw.power_limit(c, 0.01) < 0.8
    assert pw.seeds_needed(c, 0.01) is None
    assert pw.seeds_needed(c, 0.03) is not None


def test_components_from_paired_seeds_and_from_one_arm():
    sp = _bench()
    rng = np.random.default_rng(3)
    regime = sp.REGIMES[0]
    mu = sp.mu_for_auc(sp.TARGET_AUC)
    a, b, y = sp.simulate(rng, 4, mu, mu, regime)
    c = pw.paired_components(a, b, y)
    d = structural_components(a, y)[0] - structural_components(b, y)[0]
    assert c.seed == pytest.approx(max(np.var(d, ddof=1), c.test_per_seed))
    # the test's own V_test at the pilot's K is V_c + V_e / K (up to V_c's truncation at 0)
    from pneumo_ray.analysis.stats import auc_diff_two_level

    if c.test_shared > 0:
        assert c.var_test(4) == pytest.approx(auc_diff_two_level(a, b, y)["var_test"])
    one = pw.one_arm_components(a, y)
    assert one.seed == pytest.approx(2 * max(np.var(structural_components(a, y)[0], ddof=1), one.test_per_seed / 2))
    assert one.test_shared == 0 and "one arm only" in one.assumed and "V_c = 0" in one.assumed
    half = pw.one_arm_components(a, y, pair_correlation=0.5)
    assert half.seed == pytest.approx(one.seed / 2) and "r = 0.5" in half.assumed
    with pytest.raises(ValueError, match="at least 2"):
        pw.paired_components(a[:1], b[:1], y)


# --- an ablation folder written directly ---------------------------------------------------------


def _write_ablation(folder: Path, arms: dict[str, int], seed: int = 17) -> Path:
    """ablations.parquet + ablation_predictions.parquet as study.ablate writes them, for arms
    {name: seeds}, probabilities from the simulation's paired regime (seed 17: a pilot whose σ²_d is near
    the regime's, 1.3e-5 vs 1.5e-5)."""
    sp = _bench()
    rng = np.random.default_rng(seed)
    regime = next(r for r in sp.REGIMES if r.name == "paired")
    mu = sp.mu_for_auc(sp.TARGET_AUC, omega=regime.omega)
    k = max(arms.values())
    a, b, y = sp.simulate(rng, k, mu, mu, regime)
    rows, preds = [], []
    for (arm, n), probs in zip(arms.items(), (b, a)):
        aucs = structural_components(probs, y)[0]
        for s in range(n):
            rows.append(
                dict(
                    arm=arm,
                    model="cnn",
                    seed=s,
                    error=None,
                    val_auc=0.99,
                    test_auc=float(aucs[s]),
                    test_accuracy=0.85,
                    test_sensitivity=0.95,
                    test_specificity=0.7,
                    test_f1=0.9,
                    test_balanced_accuracy=0.82,
                    wall_s=200.0 if arm == "transfer" else 150.0,
                    epochs_run=2,
                    config_source="defaults",
                    tuned_for=None,
                )
            )
            names = [f"img{i:04d}.jpeg" for i in range(len(y))]
            preds.append(
                pd.DataFrame(
                    dict(
                        arm=arm,
                        model="cnn",
                        seed=s,
                        path=[f"/data/test/{x}" for x in names],
                        name=names,
                        label=y,
                        probability=probs[s],
                        prediction=(probs[s] >= 0.5).astype(int),
                    )
                )
            )
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(folder / "ablations.parquet", index=False)
    pd.concat(preds, ignore_index=True).to_parquet(folder / "ablation_predictions.parquet", index=False)
    return folder


def test_plan_through_the_command_on_two_arms(tmp_path):
    folder = _write_ablation(tmp_path / "pilot", {"transfer": 3, "no-pretrain": 3})
    r = run("study.ablate", "--plan", "--results", str(tmp_path), "--name", "pilot", "--delta", "0.005")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "cnn: no-pretrain vs transfer (3 paired seeds, 624 test images; observed ΔAUC" in out
    # the printed table is the library's, from the same tables
    (plan,) = seed_plans(
        pd.read_parquet(folder / "ablations.parquet"), pd.read_parquet(folder / "ablation_predictions.parquet"), 0.005
    )
    for k in (3, 5, 10, 20):
        cells = [f"{plan.powers[(d, k)]:.2f}".rstrip("0").rstrip(".") for d in (0.005, 0.01, 0.02)]
        row = next(line.split() for line in out.splitlines() if line.split()[:1] == [str(k)])
        assert [x.rstrip("0").rstrip(".") for x in row[1:]] == cells
    assert plan.needed is not None and f"80 % power at ΔAUC 0.005: K = {plan.needed} seeds per arm" in out
    # cost: (K − 3) more seeds in each arm at 200 s (transfer) and 150 s (no-pretrain)
    runs, seconds = plan.cost(plan.needed)
    assert runs == 2 * (plan.needed - 3) and seconds == pytest.approx((plan.needed - 3) * 350)
    assert "no-pretrain 2.5 min (2 fine-tuning epochs); transfer 3.3 min (2 fine-tuning epochs)" in out
    assert "assumed" not in out
    assert not (folder / "ablation_summary.parquet").exists()  # --plan writes nothing


def test_plan_imports_no_ray(tmp_path):
    _write_ablation(tmp_path / "pilot", {"transfer": 2, "no-pretrain": 2})
    code = (
        "import sys; from study.ablate import main; "
        f"rc = main(['--plan', '--results', {str(tmp_path)!r}, '--name', 'pilot']); "
        "assert rc == 0; assert 'ray' not in sys.modules, 'ray imported'; print('no ray')"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "no ray" in r.stdout, r.stderr


def test_plan_of_one_arm_states_its_assumptions(tmp_path):
    _write_ablation(tmp_path / "one", {"transfer": 3})
    r = run("study.ablate", "--plan", "--results", str(tmp_path), "--name", "one")
    assert r.returncode == 0, r.stderr
    assert "cnn: transfer against an arm not run yet (3 seeds of transfer)" in r.stdout
    assert "assumed: one arm only: the seed-to-seed variance of a paired difference is taken as 2 × (1 − r)" in r.stdout
    r2 = run("study.ablate", "--plan", "--results", str(tmp_path), "--name", "one", "--pair-correlation", "0.9")
    assert r2.returncode == 0 and "r = 0.9" in r2.stdout
    sigma = [float(out.split("σ²_d = ")[1].split()[0]) for out in (r.stdout, r2.stdout)]
    assert sigma[1] == pytest.approx(sigma[0] * 0.1, rel=0.05)  # 2 (1 − 0.9) vs 2 (1 − 0), printed to 2 digits


def test_report_shows_the_same_table(tmp_path):
    folder = _write_ablation(tmp_path / "pilot", {"transfer": 3, "no-pretrain": 3})
    r = run("study.report", str(folder))
    assert r.returncode == 0, r.stderr
    table = json.loads((folder / "report" / "summary.json").read_text())["tables"]["seed_plan"]
    (plan,) = seed_plans(
        pd.read_parquet(folder / "ablations.parquet"), pd.read_parquet(folder / "ablation_predictions.parquet")
    )
    assert [row["seeds K"] for row in table] == [3, 5, 10, 20]
    assert [row["power at ΔAUC 0.01"] for row in table] == [round(plan.powers[(0.01, k)], 2) for k in (3, 5, 10, 20)]
    assert "Seeds needed for 80 % power at ΔAUC 0.01" in (folder / "report" / "report.html").read_text()


# --- bad input ------------------------------------------------------------------------------------


def _one_error_line(r) -> str:
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def test_plan_on_a_folder_without_ablations(tmp_path):
    (tmp_path / "empty").mkdir()
    line = _one_error_line(run("study.ablate", "--plan", "--results", str(tmp_path), "--name", "empty"))
    assert line.startswith(f"error: --plan: {tmp_path / 'empty'}: no ablations.parquet in it")
    assert "run a pilot of 2-3 seeds first: python -m study.ablate --name empty --seeds 3" in line
    line = _one_error_line(run("study.ablate", "--plan", "--results", str(tmp_path), "--name", "nowhere"))
    assert f"{tmp_path / 'nowhere'}: no such folder" in line


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--delta", "0"], "--delta 0: give the smallest AUC difference worth finding, above 0 and below 0.5"),
        (["--delta", "0.7"], "--delta 0.7: give the smallest AUC difference"),
        (["--pair-correlation", "1"], "--pair-correlation 1: a correlation strictly between -1 and 1"),
        (["--no-pretrain"], "--plan only reads the seeds already run, so --no-pretrain would be ignored: drop them"),
        (["--tune", "3"], "--plan only reads the seeds already run, so --tune would be ignored"),
    ],
)
def test_plan_flags(tmp_path, extra, expected):
    _write_ablation(tmp_path / "pilot", {"transfer": 2, "no-pretrain": 2})
    line = _one_error_line(run("study.ablate", "--plan", "--results", str(tmp_path), "--name", "pilot", *extra))
    assert expected in line


def test_delta_without_plan():
    line = _one_error_line(run("study.ablate", "--delta", "0.01", "--name", "x"))
    assert line == "error: --delta: only with --plan (planning from the seeds run): add --plan or drop it"


def test_plan_with_one_seed_or_a_damaged_table(tmp_path):
    _write_ablation(tmp_path / "one-seed", {"transfer": 1, "no-pretrain": 1})
    line = _one_error_line(run("study.ablate", "--plan", "--results", str(tmp_path), "--name", "one-seed"))
    assert "no arm has 2 finished seeds with test predictions" in line
    folder = _write_ablation(tmp_path / "damaged", {"transfer": 2, "no-pretrain": 2})
    (folder / "ablation_predictions.parquet").write_bytes(b"PAR1 not really")
    line = _one_error_line(run("study.ablate", "--plan", "--results", str(tmp_path), "--name", "damaged"))
    assert "ablation_predictions.parquet: damaged or not a Parquet table" in line
