"""What the report's model-comparison figures and tables compute from one model's test predictions:
bootstrap CIs of the metrics and of the ROC curve (resampling test images), precision–recall,
calibration and the confusion matrix at the decision threshold (fixed by the training loss)."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from pneumo_ray.analysis.metrics import binary_metrics, roc_curve
from pneumo_ray.analysis.stats import stratified_counts, weighted_auc

# balanced accuracy beside accuracy: Kermany's test set is 62.5 % PNEUMONIA, so accuracy rewards
# calling PNEUMONIA; (sensitivity + specificity)/2 does not
CI_METRICS = ("auc", "accuracy", "balanced_accuracy", "sensitivity", "specificity")


def bootstrap_counts(labels: ArrayLike, n_boot: int, seed: int = 0) -> np.ndarray:
    """[n_boot, N] resampling counts of the test images, stratified by class (as in the ablation's
    paired bootstrap), so every replicate has both classes."""
    return stratified_counts(labels, n_boot, np.random.default_rng(seed))


def bootstrap_metrics(
    labels: ArrayLike, probs: ArrayLike, threshold: float, counts: np.ndarray, level: float = 0.95
) -> dict:
    """{metric: (value, ci_low, ci_high)} for AUC, accuracy, balanced accuracy, sensitivity and
    specificity: the value on the test set and the percentile interval over the bootstrap replicates
    in `counts`."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(probs, float)
    point = binary_metrics(y, s, threshold)
    pred = s >= threshold
    with np.errstate(invalid="ignore", divide="ignore"):
        reps = dict(
            auc=weighted_auc(s, y, counts),
            accuracy=(counts * (pred == y)).sum(1) / counts.sum(1),
            sensitivity=(counts * (pred & y)).sum(1) / (counts * y).sum(1),
            specificity=(counts * (~pred & ~y)).sum(1) / (counts * ~y).sum(1),
        )
        reps["balanced_accuracy"] = (reps["sensitivity"] + reps["specificity"]) / 2
    q = [(1 - level) / 2, (1 + level) / 2]
    return {m: (float(point[m]), *map(float, np.nanquantile(reps[m], q))) for m in CI_METRICS}


def roc_band(
    labels: ArrayLike, probs: ArrayLike, counts: np.ndarray, grid: ArrayLike | None = None, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr grid, tpr low, tpr high): pointwise percentile band of the bootstrap ROC curves, each
    read at the grid as a step function (the highest TPR reached at or below that FPR)."""
    grid = np.linspace(0, 1, 101) if grid is None else np.asarray(grid)
    y = np.asarray(labels).astype(bool)
    s = np.asarray(probs, float)
    order = np.argsort(-s, kind="mergesort")
    last = np.r_[np.flatnonzero(s[order][1:] != s[order][:-1]), len(s) - 1]  # end of each tie group
    w = counts[:, order]
    tp = np.cumsum(w * y[order], axis=1)[:, last]
    fp = np.cumsum(w * ~y[order], axis=1)[:, last]
    tpr = np.c_[np.zeros(len(w)), tp / tp[:, -1:]]
    fpr = np.c_[np.zeros(len(w)), fp / fp[:, -1:]]
    at = np.stack([t[np.searchsorted(f, grid, side="right") - 1] for f, t in zip(fpr, tpr)])
    lo, hi = np.quantile(at, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return grid, lo, hi


def precision_recall(labels: ArrayLike, probs: ArrayLike) -> tuple[np.ndarray, np.ndarray, float]:
    """(recall, precision, average precision), one point per distinct score, highest score first."""
    y = np.asarray(labels).astype(bool)
    fpr, tpr, _ = roc_curve(y, probs)
    tp, fp = tpr[1:] * y.sum(), fpr[1:] * (~y).sum()
    precision = tp / np.maximum(tp + fp, 1e-12)
    recall = tpr[1:]
    ap = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    return recall, precision, ap


def calibration(
    labels: ArrayLike, probs: ArrayLike, bins: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Reliability curve over equal-width probability bins: (mean predicted probability, observed
    fraction of PNEUMONIA, images per bin) for the non-empty bins, and the Brier score."""
    y = np.asarray(labels).astype(float)
    s = np.asarray(probs, float)
    idx = np.clip((s * bins).astype(int), 0, bins - 1)
    n = np.bincount(idx, minlength=bins)
    keep = n > 0
    mean_p = np.bincount(idx, s, bins)[keep] / n[keep]
    frac = np.bincount(idx, y, bins)[keep] / n[keep]
    return mean_p, frac, n[keep], float(np.mean((s - y) ** 2))


def confusion(labels: ArrayLike, probs: ArrayLike, threshold: float) -> np.ndarray:
    """[[TN, FP], [FN, TP]]: rows true NORMAL/PNEUMONIA, columns predicted (PNEUMONIA when ≥ threshold)."""
    m = binary_metrics(labels, probs, threshold)
    return np.array([[m["tn"], m["fp"]], [m["fn"], m["tp"]]])


def outcomes(labels: ArrayLike, probs: ArrayLike, threshold: float) -> np.ndarray:
    """'TP', 'FP', 'FN' or 'TN' per image at the threshold."""
    y = np.asarray(labels).astype(bool)
    pred = np.asarray(probs, float) >= threshold
    return np.where(pred, np.where(y, "TP", "FP"), np.where(y, "FN", "TN"))
