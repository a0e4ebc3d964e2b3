import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc

from pneumo_ray.analysis.metrics import MetricUndefined, binary_metrics, decision_threshold, roc_auc, roc_curve


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
    with pytest.warns(MetricUndefined, match="auc undefined"):  # one class: no AUC, and it says why
        assert np.isnan(roc_auc([1, 1], [0.2, 0.3]))


def test_decision_threshold_from_the_loss():
    # inverse-frequency weights (NORMAL scale·n1/n0, PNEUMONIA 1): 1 / (1 + scale); 0.5 at scale 1
    n0, n1 = 1000, 2900
    assert decision_threshold((n1 / n0, 1.0), (n0, n1)) == pytest.approx(0.5)
    assert decision_threshold((2 * n1 / n0, 1.0), (n0, n1)) == pytest.approx(1 / 3)
    # an unweighted loss: the training prevalence of PNEUMONIA
    assert decision_threshold((1.0, 1.0), (n0, n1)) == pytest.approx(n1 / (n0 + n1))
    # it is the equal-prior Bayes rule: a calibrated weighted posterior q at the threshold means p1 = p0
    w0, p1, p0 = 1.7, 0.3, 0.3
    q = n1 * p1 / (n1 * p1 + w0 * n0 * p0)
    assert q == pytest.approx(decision_threshold((w0, 1.0), (n0, n1)))
    with pytest.raises(ValueError, match="both classes"):
        decision_threshold((1.0, 1.0), (0, 5))


def test_confusion_counts_at_a_threshold():
    y = np.array([0, 0, 0, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.6, 0.4, 0.7, 0.9])
    m = binary_metrics(y, s, 0.4)
    assert (m["tp"], m["fn"], m["tn"], m["fp"]) == (3, 0, 2, 1)
    assert m["sensitivity"] == 1.0 and m["specificity"] == pytest.approx(2 / 3)
    assert m["precision"] == 0.75 and m["f1"] == pytest.approx(2 * 0.75 / 1.75)
    assert m["accuracy"] == pytest.approx(5 / 6) and m["balanced_accuracy"] == pytest.approx(5 / 6)
