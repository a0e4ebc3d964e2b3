"""Binary classification metrics and the decision rule.

The decision threshold is fixed by the training loss, before any score is seen (`decision_threshold`),
and applied unchanged to validation and test: no data set chooses it, the test set least of all.
Threshold-free ROC-AUC is the primary metric; accuracy, sensitivity and specificity are reported
at this rule. ROC-AUC, the ROC curve and the confusion counts come from scikit-learn; the statistics
it does not offer (DeLong, the two-level paired test) live in stats.py."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import confusion_matrix, roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve


def roc_auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve = P(score of a random positive > a random negative), ties count ½
    (scikit-learn's `roc_auc_score`). NaN when only one class is present."""
    y = np.asarray(labels).astype(bool)
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, np.asarray(scores, dtype=np.float64)))


def roc_curve(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false-positive rate, true-positive rate, thresholds): scikit-learn's curve with every
    distinct score kept, thresholds descending from +inf (the point that calls nothing positive)."""
    fpr, tpr, thr = sk_roc_curve(
        np.asarray(labels).astype(bool), np.asarray(scores, dtype=np.float64), drop_intermediate=False
    )
    return fpr, tpr, thr


def decision_threshold(weights: tuple[float, float], class_counts: tuple[int, int]) -> float:
    """The probability at which a model trained with class-weighted BCE says "likelihood ratio 1".

    With NORMAL weight w0, PNEUMONIA weight w1 and n0, n1 training images, the loss's minimiser
    outputs q = W1·p1 / (W1·p1 + W0·p0) with W_c = w_c·n_c, so p1/p0 = 1 ⇔ q = W1 / (W0 + W1).
    Predicting PNEUMONIA above it is the Bayes rule for equal class priors: the population
    maximiser of sensitivity + specificity (Youden's J), which the seed study's balanced class
    weights aim at. For inverse-frequency weights (w0 = scale·n1/n0, w1 = 1) it is 1 / (1 + scale),
    0.5 at scale 1; for an unweighted loss it is the training prevalence of PNEUMONIA.

    Why not the maximum of J on validation: on a validation set the model separates almost
    perfectly (AUC ≈ 0.997 on the real data) J is flat over a wide range and its argmax jumped to
    one end of it (0.09 in a 3-epoch run); every threshold metric inherited that arbitrariness.
    This rule depends on the loss alone: fixed before training, the same for every seed."""
    (w0, w1), (n0, n1) = weights, class_counts
    mass0, mass1 = float(w0) * n0, float(w1) * n1
    if not (mass0 > 0 and mass1 > 0):
        raise ValueError(
            f"decision threshold needs both classes with positive weight, got weights {weights} "
            f"and counts {class_counts}"
        )
    return mass1 / (mass0 + mass1)


def binary_metrics(labels: ArrayLike, scores: ArrayLike, threshold: float) -> dict:
    """AUC and the threshold-dependent metrics; prediction = PNEUMONIA when score ≥ threshold."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    tn, fp, fn, tp = (int(c) for c in confusion_matrix(y, s >= threshold, labels=[False, True]).ravel())

    def div(a, b):
        return a / b if b else float("nan")

    sens, spec, prec = div(tp, tp + fn), div(tn, tn + fp), div(tp, tp + fp)
    return dict(
        auc=roc_auc(y, s),
        accuracy=div(tp + tn, len(y)),
        sensitivity=sens,
        specificity=spec,
        precision=prec,
        f1=div(2 * prec * sens, prec + sens) if tp else 0.0,
        balanced_accuracy=(sens + spec) / 2,
        threshold=float(threshold),
        tn=tn,
        fp=fp,
        fn=fn,
        tp=tp,
        n=len(y),
    )
