"""Ensembles chosen on validation: greedy forward selection with replacement of trained models
(Caruana, Niculescu-Mizil, Crew & Ksikes 2004), started from the best single model by validation AUC
and grown while the validation log-loss at equal class priors falls, combined by averaging each
member's logit shifted by its own decision threshold, then applied once to test.

Two steps, kept apart on purpose. `select` sees validation scores and labels only and fixes the
members, how often each was picked and K; only then does `evaluate` look at test, with the fixed
ensemble. Nothing on test chooses a member, K, a weight or a threshold (tests poison the test labels
and probabilities and check that the choice does not change).

Selection. The first pick is the best single candidate by validation AUC (exact Mann–Whitney counts;
the first in id order on a tie): the model a sweep reports as its best trial, so K = 1 is exactly
that model. Then, at each step, add (with replacement) the candidate whose addition gives the lowest
validation log-loss at equal class priors (below), the first in id order on a tie; stop when no
addition lowers it, or after `max_k` picks. Candidates picked twice weigh twice.
Why not validation AUC all the way (Caruana's greedy on the metric of interest): on the real data it
is at its ceiling (0.998: the best seed misorders 335 of 207,968 validation pairs, five averaged
seeds 369), so no addition raised it and every real ensemble stopped at K = 1 — a measure that can
no longer tell models apart selects nothing. The log-loss keeps seeing how sure and how right every
validation image is. At equal class priors it is what the members were trained on: the mean of the
per-class mean cross-entropies of sigmoid(score), score the shifted logit below, which is the
log-odds a member trained with class weights gives at equal priors.

Combination. A member i trained with its own class weights has its own decision threshold t_i (the
loss's "likelihood ratio 1" point, `metrics.decision_threshold`). The ensemble scores an image with
the count-weighted mean of logit(p_i) − logit(t_i) and calls PNEUMONIA at a score ≥ 0 (probability
sigmoid(score) ≥ 0.5). Each member's shifted logit is ≥ 0 exactly where that member calls PNEUMONIA,
so with one member this is the single model's fixed rule, and the threshold is fixed before any score
is seen. The shifts are constants, so the ranking (AUC) is that of the plain mean logit. Averaging
probabilities instead has no such exact counterpart: the mean of probabilities with members at
thresholds 0.5 and 0.66 has no threshold that is each member's own rule, and a member's confident
logit of 8 or 16 both become p ≈ 1, so the average forgets how sure it was.

Probabilities come from float32 sigmoids: p == 1.0 means a logit above about 16.6 and p == 0.0 one
below about −103, so they are read at float32's limits (`LOW`, `HIGH`), which keeps the order of
every distinct float32 probability (K = 1 ranks exactly as the single model).
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from pneumo_ray.analysis.curves import CI_METRICS, bootstrap_counts, bootstrap_metrics
from pneumo_ray.analysis.metrics import binary_metrics
from pneumo_ray.analysis.stats import delong

LOW = 2.0**-150  # below float32's smallest positive value (2^-149): p == 0 is a logit below about -103.3
HIGH = 1.0 - 2.0**-25  # between float32's largest value below 1 (1 - 2^-24) and 1: logit 17.3
RULE = "mean of logit(p_i) - logit(t_i) over the members (t_i: member i's loss threshold); PNEUMONIA at >= 0"
SELECTION = (
    "greedy forward selection with replacement (Caruana et al. 2004): the best single model by validation AUC, "
    "then additions while the validation log-loss at equal class priors falls"
)
COMPARISON = (
    "DeLong's paired test of two fixed models on the same test images: this ensemble against the best "
    "single model by validation AUC; it compares these trained models, not ensembling in general"
)


def logit(p: ArrayLike) -> np.ndarray:
    """log(p / (1 − p)) of float32-derived probabilities, p read at float32's limits (LOW, HIGH)."""
    q = np.clip(np.asarray(p, float), LOW, HIGH)
    return np.log(q) - np.log1p(-q)


def shifted_logits(probs: ArrayLike, thresholds: ArrayLike) -> np.ndarray:
    """logit(p) − logit(t) for [candidates, images] probabilities and one threshold per candidate:
    ≥ 0 exactly where the candidate calls PNEUMONIA at its own threshold."""
    t = np.asarray(thresholds, float)
    if not np.all((t > 0) & (t < 1)):
        raise ValueError(f"decision thresholds must lie strictly between 0 and 1, got {t}")
    return logit(probs) - logit(t)[..., None]


@dataclass(frozen=True)
class Scores:
    """Candidates' shifted logits on one labelled image set: row i is candidate `ids[i]`, columns the
    images in `paths` order (the same order for every candidate)."""

    ids: tuple[Hashable, ...]
    shifted: np.ndarray  # [candidates, images]
    labels: np.ndarray  # [images], 1 = PNEUMONIA
    paths: tuple[str, ...] = ()
    names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.shifted.shape != (len(self.ids), len(self.labels)):
            raise ValueError(f"scores {self.shifted.shape} for {len(self.ids)} candidates × {len(self.labels)} images")
        if len(set(self.ids)) != len(self.ids):
            raise ValueError(f"candidate ids are not unique: {list(self.ids)}")

    def row(self, candidate: Hashable) -> np.ndarray:
        return self.shifted[self.ids.index(candidate)]


def scores_from_predictions(
    preds: pd.DataFrame, thresholds: Mapping[Hashable, float], id_column: str, where: str
) -> Scores:
    """Scores of every candidate in `thresholds` from a long table (one row per candidate and image:
    `id_column`, path, label, probability; name optional). Every candidate must have the same images
    with the same labels, each once; else ValueError naming `where` and the candidate."""
    ids = tuple(sorted(thresholds))
    mats, labels, paths, names = [], None, None, None
    for cid in ids:
        p = preds[preds[id_column] == cid].sort_values("path")
        if p.empty:
            raise ValueError(f"{where}: no predictions of {id_column} {cid}")
        if p["path"].duplicated().any():
            raise ValueError(f"{where}: {id_column} {cid} has an image twice")
        lab, pth = p["label"].to_numpy(int), tuple(p["path"].astype(str))
        if labels is not None and (pth != paths or not np.array_equal(lab, labels)):
            raise ValueError(f"{where}: {id_column} {cid} has other images or labels than {id_column} {ids[0]}")
        labels, paths = lab, pth
        names = tuple(p["name"].astype(str)) if "name" in p else pth
        mats.append(p["probability"].to_numpy(float))
    shifted = shifted_logits(np.stack(mats), [thresholds[c] for c in ids])
    return Scores(ids, shifted, labels, paths, names)


def _auc_counts(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """2 × the Mann–Whitney U of each row of `scores` (= 2 · AUC · positives · negatives): integers,
    ties counting one half, so AUCs compare exactly."""
    from scipy.stats import rankdata

    y = labels.astype(bool)
    m = int(y.sum())
    ranks2 = np.rint(2 * rankdata(scores, axis=-1))  # mid-ranks × 2 are integers
    return ranks2[..., y].sum(axis=-1) - m * (m + 1)


def balanced_log_loss(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Log-loss at equal class priors of each row of `scores` (log-odds; sigmoid(score) = P(PNEUMONIA)):
    the mean over the two classes of the mean cross-entropy within the class."""
    y = labels.astype(bool)
    pos = np.logaddexp(0.0, -scores[..., y]).mean(axis=-1)  # −log sigmoid(s) on PNEUMONIA images
    neg = np.logaddexp(0.0, scores[..., ~y]).mean(axis=-1)  # −log(1 − sigmoid(s)) on NORMAL images
    return (pos + neg) / 2


@dataclass(frozen=True)
class Selection:
    """A fixed ensemble: its members (distinct, in the order first picked), how often each was picked,
    the validation AUC and log-loss after each pick, and the best single candidate it starts from."""

    members: tuple[Hashable, ...]
    counts: tuple[int, ...]
    steps: tuple[float, ...]  # validation AUC after pick 1, 2, …, K
    losses: tuple[float, ...]  # validation log-loss at equal priors after pick 1, 2, …, K
    max_k: int
    n_candidates: int
    n_val: int

    @property
    def k(self) -> int:
        """Picks in all (members picked twice count twice): the ensemble's size as chosen on validation."""
        return sum(self.counts)

    @property
    def weights(self) -> tuple[float, ...]:
        return tuple(c / self.k for c in self.counts)

    @property
    def val_auc(self) -> float:
        return self.steps[-1]

    @property
    def best_single(self) -> Hashable:
        return self.members[0]

    @property
    def best_single_val_auc(self) -> float:
        return self.steps[0]


def select(val: Scores, max_k: int) -> Selection:
    """The best single candidate by VALIDATION AUC, then greedy additions with replacement while the
    validation log-loss at equal priors falls, at most `max_k` picks. Ties go to the candidate first in
    id order. Takes validation scores and labels only: nothing here can see test."""
    if max_k < 1:
        raise ValueError(f"an ensemble needs at least 1 member, got max_k={max_k}")
    y = np.asarray(val.labels).astype(bool)
    if y.all() or not y.any():
        raise ValueError("the validation AUC needs both classes")
    if not np.isfinite(val.shifted).all():
        bad = [c for c, r in zip(val.ids, val.shifted) if not np.isfinite(r).all()]
        raise ValueError(f"candidates {bad} have validation scores that are NaN (did training diverge?)")
    order = sorted(range(len(val.ids)), key=lambda i: val.ids[i])
    z = val.shifted[order]
    pairs = float(y.sum()) * float((~y).sum())
    first = int(np.argmax(_auc_counts(z, y)))  # the first maximum: the first candidate in id order on a tie
    total, picks = z[first].copy(), [first]
    losses = [float(balanced_log_loss(z[first], y))]
    while len(picks) < max_k:
        trial = balanced_log_loss((total + z) / (len(picks) + 1), y)
        i = int(np.argmin(trial))
        if not trial[i] < losses[-1]:
            break
        total += z[i]
        picks.append(i)
        losses.append(float(trial[i]))
    aucs, running = [], np.zeros(z.shape[1])
    for i in picks:
        running = running + z[i]
        aucs.append(float(_auc_counts(running, y) / (2 * pairs)))  # the sum ranks as the mean
    members = list(dict.fromkeys(val.ids[order[i]] for i in picks))
    counts = [sum(val.ids[order[i]] == m for i in picks) for m in members]
    return Selection(
        members=tuple(members),
        counts=tuple(counts),
        steps=tuple(aucs),
        losses=tuple(losses),
        max_k=max_k,
        n_candidates=len(val.ids),
        n_val=len(y),
    )


def combine(scores: Scores, selection: Selection) -> np.ndarray:
    """The ensemble's score per image: the count-weighted mean of its members' shifted logits
    (PNEUMONIA at ≥ 0). With one member, that member's own shifted logit, unchanged."""
    missing = [m for m in selection.members if m not in scores.ids]
    if missing:
        raise ValueError(f"no scores for ensemble members {missing}")
    w = np.asarray(selection.counts, float)
    rows = np.stack([scores.row(m) for m in selection.members])
    return rows[0].copy() if len(w) == 1 else (w @ rows) / w.sum()


@dataclass(frozen=True)
class Evaluation:
    """The fixed ensemble and the best single candidate on test: metrics at their fixed rules (score
    ≥ 0), bootstrap intervals over the test images, and DeLong's paired test of the two."""

    score: np.ndarray  # the ensemble's per-image score
    single_score: np.ndarray  # the best single candidate's shifted logit
    metrics: dict  # binary_metrics of the ensemble at 0
    single_metrics: dict
    intervals: dict  # {metric: (value, low, high)}, CI_METRICS
    single_intervals: dict
    delong: dict
    n_boot: int


def evaluate(test: Scores, selection: Selection, n_boot: int = 2000, seed: int = 0) -> Evaluation:
    """Apply the fixed `selection` to test, once: the ensemble and its best single member at their
    fixed rules, each with percentile intervals from the same stratified bootstrap of the test images
    (as the report's), and DeLong's paired test of their AUCs."""
    y = np.asarray(test.labels).astype(int)
    score = combine(test, selection)
    single = test.row(selection.best_single)
    counts = bootstrap_counts(y, n_boot, seed)
    return Evaluation(
        score=score,
        single_score=single,
        metrics=binary_metrics(y, score, 0.0),
        single_metrics=binary_metrics(y, single, 0.0),
        intervals=bootstrap_metrics(y, score, 0.0, counts),
        single_intervals=bootstrap_metrics(y, single, 0.0, counts),
        delong=delong(score, single, y),
        n_boot=n_boot,
    )


def build(val: Scores, test: Scores, max_k: int, n_boot: int = 2000, seed: int = 0) -> tuple[Selection, Evaluation]:
    """Select on validation, THEN evaluate on test: the selection is fixed before test is read."""
    selection = select(val, max_k)
    return selection, evaluate(test, selection, n_boot, seed)


def summary_row(selection: Selection, ev: Evaluation, thresholds: Mapping[Hashable, float]) -> dict:
    """One row of ensemble.parquet (schema: results/README.md): what was chosen on validation, and
    the ensemble and its best single member on test with intervals and the paired DeLong test."""
    row = dict(
        selection=SELECTION,
        rule=RULE,
        max_k=selection.max_k,
        k=selection.k,
        n_members=len(selection.members),
        n_candidates=selection.n_candidates,
        members=json.dumps([str(m) for m in selection.members]),
        counts=json.dumps(list(selection.counts)),
        weights=json.dumps([round(w, 6) for w in selection.weights]),
        thresholds=json.dumps([float(thresholds[m]) for m in selection.members]),
        val_auc_steps=json.dumps(list(selection.steps)),
        val_log_loss_steps=json.dumps(list(selection.losses)),
        n_val=selection.n_val,
        val_auc=selection.val_auc,
        best_single=str(selection.best_single),
        best_single_val_auc=selection.best_single_val_auc,
        n_test=len(ev.score),
        n_boot=ev.n_boot,
    )
    for prefix, m, ci in (
        ("test_", ev.metrics, ev.intervals),
        ("single_test_", ev.single_metrics, ev.single_intervals),
    ):
        for k in ("auc", "accuracy", "balanced_accuracy", "sensitivity", "specificity", "precision", "f1"):
            row[f"{prefix}{k}"] = m[k]
        for k in CI_METRICS:
            row[f"{prefix}{k}_ci_low"], row[f"{prefix}{k}_ci_high"] = ci[k][1], ci[k][2]
        for k in ("tn", "fp", "fn", "tp"):
            row[f"{prefix}{k}"] = m[k]
    d = ev.delong
    row.update(
        comparison=COMPARISON,
        delong_auc_diff=d["diff"],
        delong_se=d["se"],
        delong_z=d["z"],
        p_delong=d["p"],
    )
    return row


def prediction_frame(test: Scores, ev: Evaluation) -> pd.DataFrame:
    """One row per test image: the ensemble's score, its probability sigmoid(score) and the prediction
    at score ≥ 0 (probability 0.5)."""
    with np.errstate(over="ignore"):
        prob = 1.0 / (1.0 + np.exp(-ev.score))
    return pd.DataFrame(
        dict(
            path=list(test.paths),
            name=list(test.names),
            label=np.asarray(test.labels).astype(int),
            score=ev.score,
            probability=prob,
            prediction=(ev.score >= 0).astype(int),
        )
    )


def describe(row: Mapping) -> list[str]:
    """A few readable lines about one ensemble.parquet row (the sweep's summary, study.ensemble)."""
    members = json.loads(row["members"])
    counts = json.loads(row["counts"])
    picked = ", ".join(f"{m}×{c}" if c > 1 else str(m) for m, c in zip(members, counts))
    lines = [
        f"K = {row['k']} pick(s) of at most {row['max_k']} from {row['n_candidates']} candidate(s): {picked}; "
        f"validation AUC {row['val_auc']:.4f} (best single {row['best_single']}: {row['best_single_val_auc']:.4f})",
    ]

    def cell(prefix: str, k: str) -> str:
        return f"{row[prefix + k]:.3f} [{row[prefix + k + '_ci_low']:.3f}, {row[prefix + k + '_ci_high']:.3f}]"

    if row["k"] == 1:
        alone = "no addition lowered its validation log-loss" if row["n_candidates"] > 1 else "the only candidate"
        lines.append(f"  the validation chose the best single model alone ({alone}): the ensemble is that model")
    for label, prefix in (("ensemble   ", "test_"), ("best single", "single_test_")):
        lines.append(f"  {label}  " + "  ".join(f"{k.replace('_', ' ')} {cell(prefix, k)}" for k in CI_METRICS))
    if row["k"] == 1:
        return lines
    p = row["p_delong"]
    lines.append(
        f"  test AUC ensemble − best single {row['delong_auc_diff']:+.4f} (SE {row['delong_se']:.4f}), DeLong "
        f"p = {p:.3g} on {row['n_test']} test images: these two trained models compared, not ensembling in general"
    )
    return lines
