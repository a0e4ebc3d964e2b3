"""Binary classification metrics and the decision rule.

The decision threshold is fixed by the training loss, before any score is seen (`decision_threshold`),
and applied unchanged to validation and test: no data set chooses it, the test set least of all.
Threshold-free ROC-AUC is the primary metric; accuracy, sensitivity and specificity are reported
at this rule. ROC-AUC, the ROC curve and the confusion counts come from scikit-learn; the statistics
it does not offer (DeLong, the two-level paired test) live in stats.py.

A metric that cannot be computed (AUC with one class present, sensitivity without a PNEUMONIA
image, anything on scores that are NaN) is NaN, never silently: a `MetricUndefined` warning says
which metric and why, and `binary_metrics` carries the reasons in its `undefined` entry (written
with the metrics: `val_undefined`, `test_undefined`)."""

from __future__ import annotations

import warnings

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import confusion_matrix, roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve


class MetricUndefined(UserWarning):
    """A metric that cannot be computed on these labels and scores: its value is NaN, the message says why."""


def _classes(y: np.ndarray) -> str:
    return f"{int(y.sum())} PNEUMONIA and {int((~y).sum())} NORMAL"


def auc_undefined(labels: ArrayLike, scores: ArrayLike) -> str | None:
    """Why the ROC-AUC of `scores` on `labels` cannot be computed; None if it can."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if np.isnan(s).any():
        return f"{int(np.isnan(s).sum())} of {len(s)} scores are NaN (did training diverge?)"
    if y.all() or not y.any():
        return f"it needs both classes, and the {len(y)} labels hold {_classes(y)}"
    return None


def _warn(metrics: str, reason: str) -> None:
    warnings.warn(f"{metrics} undefined (NaN): {reason}", MetricUndefined, stacklevel=3)


def roc_auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve = P(score of a random positive > a random negative), ties count ½
    (scikit-learn's `roc_auc_score`). NaN, with a MetricUndefined warning saying why, when only one
    class is present or a score is NaN."""
    reason = auc_undefined(labels, scores)
    if reason:
        _warn("auc", reason)
        return float("nan")
    y = np.asarray(labels).astype(bool)
    return float(roc_auc_score(y, np.asarray(scores, dtype=np.float64)))


def roc_curve(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false-positive rate, true-positive rate, thresholds): scikit-learn's curve with every
    distinct score kept, thresholds descending from +inf (the point that calls nothing positive)."""
    fpr, tpr, thr = sk_roc_curve(
        np.asarray(labels).astype(bool), np.asarray(scores, dtype=np.float64), drop_intermediate=False
    )
    return fpr, tpr, thr


def decision_threshold(
    weights: tuple[float, float], class_counts: tuple[int, int], label_smoothing: float = 0.0
) -> float:
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
    This rule depends on the loss alone: fixed before training, the same for every seed.

    Label smoothing ε trains towards targets ε/2 (NORMAL) and 1 − ε/2 (PNEUMONIA). The weighted loss's
    minimiser is then q = ε/2 + (1 − ε)·W1·p1 / (W1·p1 + W0·p0) (set the gradient of
    W1·p1·BCE(q, 1 − ε/2) + W0·p0·BCE(q, ε/2) to 0), an increasing map of the unsmoothed one: the
    same Bayes rule is q ≥ ε/2 + (1 − ε)·W1/(W0 + W1). Keeping the unsmoothed threshold would change
    the rule: above ½ (NORMAL up-weighted) it would call fewer images PNEUMONIA, a specificity gain
    made by the threshold, not by the model. Mixup keeps the rule: each label keeps its class weight
    (train/loop.py), so each class's total weight in the loss is unchanged, but the mixup loss's
    minimiser has no closed form and is not exactly this rule: in bench/mixup_threshold.py (two unit
    Gaussians, 30/70, alpha 0.2) the output at likelihood ratio 1 was 0.633 ± 0.016 where the rule
    says 0.661, with and without class weights alike: the boundary moves 0.07 SD towards NORMAL,
    so a mixup arm's threshold metrics lean to specificity a little; its AUC does not."""
    (w0, w1), (n0, n1) = weights, class_counts
    mass0, mass1 = float(w0) * n0, float(w1) * n1
    if not (mass0 > 0 and mass1 > 0):
        raise ValueError(
            f"decision threshold needs both classes with positive weight, got weights {weights} "
            f"and counts {class_counts}"
        )
    threshold = mass1 / (mass0 + mass1)
    if label_smoothing:
        threshold = label_smoothing / 2 + (1 - label_smoothing) * threshold
    return threshold


def binary_metrics(labels: ArrayLike, scores: ArrayLike, threshold: float) -> dict:
    """AUC and the threshold-dependent metrics; prediction = PNEUMONIA when score ≥ threshold.
    A metric that cannot be computed is NaN and named, with why, in `undefined` ("" when every one
    is defined; "auc: …; specificity, balanced_accuracy: …"), and in a MetricUndefined warning."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    tn, fp, fn, tp = (int(c) for c in confusion_matrix(y, s >= threshold, labels=[False, True]).ravel())
    auc_why = auc_undefined(y, s)
    nan_scores = auc_why if np.isnan(s).any() else None  # then no metric means anything
    undefined: dict[str, list[str]] = {auc_why: ["auc"]} if auc_why else {}  # reason → metrics

    def div(metric: str, a: float, b: float, why: str) -> float:
        why = nan_scores or (None if b else why)
        if why:
            undefined.setdefault(why, []).append(metric)
            return float("nan")
        return a / b

    sens = div("sensitivity", tp, tp + fn, "no PNEUMONIA image to detect")
    spec = div("specificity", tn, tn + fp, "no NORMAL image to clear")
    metrics = dict(
        auc=float("nan") if auc_why else float(roc_auc_score(y, s)),
        accuracy=div("accuracy", tp + tn, len(y), "no images"),
        sensitivity=sens,
        specificity=spec,
        precision=div("precision", tp, tp + fp, f"no image scored at or above the threshold {threshold:g}"),
        f1=div("f1", 2 * tp, 2 * tp + fp + fn, "no PNEUMONIA image, and none predicted"),  # = 2PR / (P + R)
        balanced_accuracy=(sens + spec) / 2,
        threshold=float(threshold),
        tn=tn,
        fp=fp,
        fn=fn,
        tp=tp,
        n=len(y),
    )
    halves = [names for names in undefined.values() if {"sensitivity", "specificity"} & set(names)]
    if halves and "balanced_accuracy" not in halves[0]:  # undefined with either of its halves
        halves[0].append("balanced_accuracy")
    for why, names in undefined.items():
        _warn(", ".join(names), why)
    metrics["undefined"] = "; ".join(f"{', '.join(names)}: {why}" for why, names in undefined.items())
    return metrics
