"""Binary classification metrics and the decision rule.

The decision threshold is fixed by the training loss, before any score is seen (`decision_threshold`),
and applied unchanged to validation and test: no data set chooses it, the test set least of all.
Threshold-free ROC-AUC is the primary metric; accuracy, sensitivity and specificity are reported
at this rule."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def roc_auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve = P(score of a random positive > a random negative), ties count ½.
    NaN when only one class is present."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), np.float64)
    sorted_s = s[order]
    # average ranks over ties (Mann–Whitney U)
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false-positive rate, true-positive rate, thresholds), thresholds descending, one per distinct score."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    tpr = np.r_[0.0, tp / max(y.sum(), 1)]
    fpr = np.r_[0.0, fp / max((~y).sum(), 1)]
    return fpr, tpr, np.r_[np.inf, s[last]]


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
    pred = s >= threshold
    tp, fn = int((pred & y).sum()), int((~pred & y).sum())
    tn, fp = int((~pred & ~y).sum()), int((pred & ~y).sum())

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
