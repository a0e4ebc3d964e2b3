"""Binary classification metrics. The decision threshold is chosen on validation (Youden's J) and
then applied unchanged to test: the test set never chooses anything."""

from __future__ import annotations

import numpy as np


def roc_auc(labels, scores) -> float:
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


def roc_curve(labels, scores):
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


def choose_threshold(labels, scores) -> float:
    """Youden's J: the threshold maximising sensitivity + specificity − 1 (ties → the higher one)."""
    fpr, tpr, thr = roc_curve(labels, scores)
    j = tpr - fpr
    j = j[1:]  # skip the +inf point (classifies nothing as positive)
    best = int(np.flatnonzero(j >= j.max() - 1e-12)[0]) + 1
    return float(thr[best])


def binary_metrics(labels, scores, threshold: float) -> dict:
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
        auc=roc_auc(y, s), accuracy=div(tp + tn, len(y)), sensitivity=sens, specificity=spec,
        precision=prec, f1=div(2 * prec * sens, prec + sens) if tp else 0.0,
        balanced_accuracy=(sens + spec) / 2, threshold=float(threshold), tn=tn, fp=fp, fn=fn, tp=tp, n=len(y),
    )
