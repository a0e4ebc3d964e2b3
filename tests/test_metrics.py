import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve as sk_roc

from pneumo_ray.metrics import binary_metrics, choose_threshold, roc_auc, roc_curve


def test_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.random(500) + 0.3 * y, 1)  # rounding makes many ties
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    fpr, tpr, _ = roc_curve(y, s)
    sfpr, stpr, _ = sk_roc(y, s, drop_intermediate=False)
    assert np.allclose(fpr, sfpr) and np.allclose(tpr, stpr)


def test_auc_edge_cases():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5
    assert np.isnan(roc_auc([1, 1], [0.2, 0.3]))


def test_threshold_youden_and_confusion():
    y = np.array([0, 0, 0, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.6, 0.4, 0.7, 0.9])
    t = choose_threshold(y, s)
    assert t == 0.7  # sens 2/3 spec 1 (J=.667) beats t=0.4 (sens 1, spec 2/3 → J=.667, tie → higher threshold)
    m = binary_metrics(y, s, 0.4)
    assert (m["tp"], m["fn"], m["tn"], m["fp"]) == (3, 0, 2, 1)
    assert m["sensitivity"] == 1.0 and m["specificity"] == pytest.approx(2 / 3)
    assert m["precision"] == 0.75 and m["f1"] == pytest.approx(2 * 0.75 / 1.75)
    assert m["accuracy"] == pytest.approx(5 / 6) and m["balanced_accuracy"] == pytest.approx(5 / 6)
