"""Statistics against known cases: hand-computed DeLong, bootstrap behaviour at the extremes."""

import math

import numpy as np
import pytest

from pneumo_ray.analysis.metrics import roc_auc
from pneumo_ray.analysis.stats import delong, mean_ci, paired_bootstrap_auc, weighted_auc


def test_delong_hand_computed_example():
    # positives then negatives. A: positives 0.9 0.8 0.4, negatives 0.5 0.3 → AUC 5/6,
    # V10 = (1, 1, 1/2), V01 = (2/3, 1). B: 0.7 0.2 0.4 / 0.5 0.1 → AUC 2/3, V10 = (1, 1/2, 1/2),
    # V01 = (1/3, 1). S10 = [[1/12, 1/24], [1/24, 1/12]], S01 = [[1/18, 1/9], [1/9, 2/9]];
    # var(diff) = (1/12 + 1/12 - 1/12)/3 + (1/18 + 2/9 - 2/9)/2 = 1/18 → z = (1/6)/sqrt(1/18) = 1/sqrt(2).
    y = np.array([1, 1, 1, 0, 0])
    r = delong([0.9, 0.8, 0.4, 0.5, 0.3], [0.7, 0.2, 0.4, 0.5, 0.1], y)
    assert r["auc_a"] == pytest.approx(5 / 6) and r["auc_b"] == pytest.approx(2 / 3)
    assert r["se"] == pytest.approx(math.sqrt(1 / 18))
    assert r["z"] == pytest.approx(1 / math.sqrt(2))
    assert r["p"] == pytest.approx(math.erfc(0.5))


def test_delong_identical_scores_and_ties():
    y = np.array([1, 0, 1, 0, 1, 0])
    s = np.array([0.5, 0.5, 0.7, 0.2, 0.5, 0.9])
    r = delong(s, s, y)
    assert r["diff"] == 0 and r["p"] == 1.0
    assert r["auc_a"] == pytest.approx(roc_auc(y, s))


def test_weighted_auc_equals_auc_of_resampled_set():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.random(200) + 0.3 * y, 2)      # rounded: ties on purpose
    assert weighted_auc(s, y, np.ones(200))[0] == pytest.approx(roc_auc(y, s))
    idx = rng.integers(0, 200, 200)
    counts = np.bincount(idx, minlength=200)
    assert weighted_auc(s, y, counts)[0] == pytest.approx(roc_auc(y[idx], s[idx]))


def test_paired_bootstrap_identical_predictions_gives_zero():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    p = rng.random((3, 300)) + 0.5 * y
    r = paired_bootstrap_auc(p, p.copy(), y, n_boot=300)
    assert r["diff"] == 0 and r["ci_low"] <= 0 <= r["ci_high"] and r["p"] == 1.0


def test_paired_bootstrap_clearly_better_model_excludes_zero():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 400)
    good = rng.normal(0, 1, (3, 400)) + 2.0 * y
    weak = rng.normal(0, 1, (3, 400)) + 0.5 * y
    r = paired_bootstrap_auc(good, weak, y, n_boot=500)
    assert r["diff"] > 0.2 and r["ci_low"] > 0 and r["p"] < 0.01
    flipped = paired_bootstrap_auc(weak, good, y, n_boot=500)
    assert flipped["ci_high"] < 0 and flipped["diff"] == pytest.approx(-r["diff"])


def test_paired_bootstrap_same_quality_models_ci_contains_zero():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 400)
    a = rng.normal(0, 1, (4, 400)) + 1.0 * y
    b = rng.normal(0, 1, (4, 400)) + 1.0 * y
    r = paired_bootstrap_auc(a, b, y, n_boot=500)
    assert r["ci_low"] < 0 < r["ci_high"] and r["p"] > 0.05


def test_paired_bootstrap_refuses_unpaired_shapes():
    with pytest.raises(ValueError, match="same seeds"):
        paired_bootstrap_auc(np.zeros((2, 10)), np.zeros((3, 10)), np.arange(10) % 2)


def test_mean_ci_t_interval():
    m, lo, hi = mean_ci([1.0, 2.0, 3.0])
    # t(0.975, 2) = 4.3027; sd = 1; half-width = 4.3027 / sqrt(3)
    assert m == 2.0 and hi - m == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5) and m - lo == pytest.approx(hi - m)
    assert math.isnan(mean_ci([0.9])[1])
