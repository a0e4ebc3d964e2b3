"""Validation-chosen ensembles (analysis/ensemble.py): the choice never sees test, K = 1 is the best
single model exactly, the shifted-logit rule, and the greedy selection against a plain re-computation
with scikit-learn."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from pneumo_ray.analysis.curves import bootstrap_counts, bootstrap_metrics
from pneumo_ray.analysis.ensemble import (
    Scores,
    build,
    combine,
    logit,
    prediction_frame,
    scores_from_predictions,
    select,
    shifted_logits,
    summary_row,
)
from pneumo_ray.analysis.metrics import binary_metrics


def _candidates(rng, n_models: int, n_neg: int, n_pos: int, spread: float = 1.0):
    """Probabilities (float32 sigmoids, as the models give them) of `n_models` correlated models on one
    image set, each with its own class-weight threshold 1/(1 + s), s in [0.3, 1.5]."""
    y = np.r_[np.zeros(n_neg, int), np.ones(n_pos, int)]
    shared = rng.normal(size=len(y))
    logits = 2.2 * (2 * y - 1) + shared + spread * rng.normal(size=(n_models, len(y)))
    probs = (1 / (1 + np.exp(-logits.astype(np.float32)))).astype(np.float64)
    thresholds = 1 / (1 + rng.uniform(0.3, 1.5, n_models))
    return probs, thresholds, y


def _scores(probs, thresholds, y, ids=None) -> Scores:
    ids = tuple(ids or (f"t{i:02d}" for i in range(len(probs))))
    paths = tuple(f"img{j:04d}.jpeg" for j in range(len(y)))
    return Scores(ids, shifted_logits(probs, thresholds), y, paths, paths)


def test_the_shifted_logit_is_each_members_own_rule():
    """logit(p) − logit(t) ≥ 0 exactly where p ≥ t, at float32's extremes (p = 0 and 1), at p == t,
    and for the float32 neighbours of t; and the order of distinct float32 probabilities is kept."""
    t = np.array([1 / 1.51, 0.5, 0.3])
    near = [np.nextafter(np.float32(x), np.float32(d)) for x in t for d in (0, 1)]
    p = np.array([0.0, 1.0, *t, *near, 1 - 2.0**-24, 2.0**-149, 1e-30, 0.4, 0.66, 0.7], dtype=np.float32)
    p = p.astype(np.float64)
    z = shifted_logits(np.tile(p, (3, 1)), t)
    assert ((z >= 0) == (p[None, :] >= t[:, None])).all()
    assert np.isfinite(z).all()
    order = np.argsort(p, kind="stable")
    assert (np.diff(logit(p)[order]) > 0).sum() == len(np.unique(p)) - 1  # strictly increasing over distinct p
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        shifted_logits(np.ones((1, 2)) / 2, [1.0])


def test_the_ensemble_averages_shifted_logits_with_the_pick_counts():
    rng = np.random.default_rng(3)
    probs, thr, y = _candidates(rng, 3, 50, 80)
    s = _scores(probs, thr, y)
    sel = select(s, 10)
    z = shifted_logits(probs, thr)
    # a hand-made selection: t00 twice, t02 once
    from dataclasses import replace

    hand = replace(sel, members=("t00", "t02"), counts=(2, 1))
    assert combine(s, hand) == pytest.approx((2 * z[0] + z[2]) / 3, abs=1e-12)
    # its ranking is that of the plain mean logit: the shifts are constants
    plain = (2 * logit(probs[0]) + logit(probs[2])) / 3
    assert roc_auc_score(y, combine(s, hand)) == pytest.approx(roc_auc_score(y, plain), abs=1e-15)
    # and its probability: sigmoid(score), the prediction at score >= 0 (= probability 0.5)
    ev = build(s, s, 1)[1]
    f = prediction_frame(s, ev)
    assert (f.prediction == (f.score >= 0)).all() and (f.prediction == (f.probability >= 0.5)).all()


def _greedy_by_hand(probs, thr, y, max_k):
    """The greedy selection written out plainly: logits averaged, AUC from scikit-learn, ties to the
    smallest id, stop when the best addition does not raise validation AUC."""
    z = logit(probs) - logit(thr)[:, None]
    picks, steps, total, best = [], [], np.zeros(len(y)), -1.0
    for _ in range(max_k):
        aucs = [roc_auc_score(y, (total + z[i]) / (len(picks) + 1)) for i in range(len(z))]
        i = int(np.argmax(np.round(aucs, 12)))
        if picks and round(aucs[i], 12) <= round(best, 12):
            break
        picks.append(i)
        steps.append(aucs[i])
        best, total = aucs[i], total + z[i]
    return picks, steps


@pytest.mark.parametrize("seed", range(6))
def test_greedy_selection_matches_a_plain_recomputation(seed):
    rng = np.random.default_rng(seed)
    probs, thr, y = _candidates(rng, 7, 60, 140, spread=1.5)
    sel = select(_scores(probs, thr, y), 8)
    picks, steps = _greedy_by_hand(probs, thr, y, 8)
    assert sel.steps == pytest.approx(steps, abs=1e-12)
    got = [m for m, c in zip(sel.members, sel.counts) for _ in range(c)]
    assert sorted(got) == sorted(f"t{i:02d}" for i in picks)
    assert sel.members[0] == f"t{picks[0]:02d}" and sel.k == len(picks) <= 8
    assert all(b > a for a, b in zip(steps, steps[1:]))  # each pick raised validation AUC
    # the first pick is the best single model by validation AUC
    single = [roc_auc_score(y, p) for p in probs]
    assert sel.best_single_val_auc == pytest.approx(max(single), abs=1e-12)


def test_ties_go_to_the_first_id_and_the_cap_holds():
    rng = np.random.default_rng(0)
    probs, thr, y = _candidates(rng, 3, 40, 60, spread=2.0)
    good = _candidates(np.random.default_rng(1), 1, 40, 60, spread=0.3)[0][0]  # the best single model
    same = np.stack([good, good, probs[0], probs[1]])  # "b" and "a" score identically
    s = _scores(same, [0.5, 0.5, 0.4, 0.6], y, ids=["b", "a", "c", "d"])
    sel = select(s, 1)
    assert sel.members == ("a",) and sel.k == 1 and sel.max_k == 1
    assert select(s, 6).best_single == "a"
    # a perfect validation separation cannot be raised: K = 1
    perfect = np.where(y == 1, 0.9, 0.1)[None, :]
    s2 = _scores(np.vstack([perfect, probs[:2]]), [0.5, 0.5, 0.5], y, ids=["p", "q", "r"])
    assert select(s2, 5).members == ("p",) and select(s2, 5).k == 1
    with pytest.raises(ValueError, match="at least 1 member"):
        select(s2, 0)


def test_poisoned_test_labels_and_probabilities_do_not_change_the_choice():
    """The members, their counts and K depend on validation alone: the same whatever test holds."""
    rng = np.random.default_rng(11)
    probs, thr, yv = _candidates(rng, 6, 80, 200, spread=1.5)
    tprobs, _, yt = _candidates(rng, 6, 234, 390, spread=1.5)
    val = _scores(probs, thr, yv)
    test = _scores(tprobs, thr, yt)
    sel, ev = build(val, test, 5)
    assert sel.k >= 2  # a real ensemble, or the check below would be weak
    for poison in range(4):
        r = np.random.default_rng(100 + poison)
        labels = r.permutation(yt) if poison % 2 else 1 - yt
        tp = r.random(tprobs.shape) if poison < 2 else tprobs[::-1].copy()
        bad = _scores(tp, thr, labels)
        sel2, ev2 = build(val, bad, 5)
        assert (sel2.members, sel2.counts, sel2.k, sel2.steps) == (sel.members, sel.counts, sel.k, sel.steps)
        assert ev2.metrics["auc"] != ev.metrics["auc"]  # test was read, after the choice


def test_k_1_is_the_best_single_model_exactly():
    """With one member the ensemble's test predictions, metrics and intervals are those of the best
    single model (by validation AUC) at its own loss threshold."""
    rng = np.random.default_rng(5)
    probs, thr, yv = _candidates(rng, 5, 70, 150)
    tprobs, _, yt = _candidates(rng, 5, 234, 390)
    val, test = _scores(probs, thr, yv), _scores(tprobs, thr, yt)
    sel, ev = build(val, test, 1, n_boot=500)
    best = int(np.argmax([roc_auc_score(yv, p) for p in probs]))
    assert sel.members == (f"t{best:02d}",) and sel.k == 1
    p, t = tprobs[best], thr[best]
    f = prediction_frame(test, ev)
    assert (f.prediction.to_numpy() == (p >= t)).all()
    single = binary_metrics(yt, p, t)
    for k in ("auc", "accuracy", "balanced_accuracy", "sensitivity", "specificity", "tn", "fp", "fn", "tp"):
        assert ev.metrics[k] == single[k], k
    ref = bootstrap_metrics(yt, p, t, bootstrap_counts(yt, 500, 0))
    assert ev.intervals == ref
    assert ev.delong["diff"] == 0.0 and ev.delong["p"] == 1.0


def test_scores_from_a_long_table_and_the_row():
    rng = np.random.default_rng(2)
    probs, thr, y = _candidates(rng, 3, 30, 50)
    ids = ["x1", "x0", "x2"]
    rows = [
        pd.DataFrame(dict(trial_id=i, path=[f"p{j:03d}" for j in range(len(y))], label=y, probability=probs[k]))
        for k, i in enumerate(ids)
    ]
    preds = pd.concat(rows).sample(frac=1, random_state=0)  # any row order
    s = scores_from_predictions(preds, dict(zip(ids, thr)), "trial_id", "val_predictions.parquet")
    assert s.ids == ("x0", "x1", "x2")
    assert np.allclose(s.row("x1"), shifted_logits(probs[:1], thr[:1])[0])
    sel, ev = build(s, s, 3, n_boot=200)
    row = summary_row(sel, ev, dict(zip(ids, thr)))
    assert row["k"] == sel.k and row["test_auc"] == ev.metrics["auc"] and "balanced_accuracy_ci_low" in str(row)
    assert (
        row["test_balanced_accuracy_ci_low"] <= row["test_balanced_accuracy"] <= row["test_balanced_accuracy_ci_high"]
    )
    short = preds[~((preds.trial_id == "x2") & (preds.path == "p000"))]
    with pytest.raises(ValueError, match="trial_id x2 has other images"):
        scores_from_predictions(short, dict(zip(ids, thr)), "trial_id", "val_predictions.parquet")
    with pytest.raises(ValueError, match="no predictions of trial_id zz"):
        scores_from_predictions(preds, {"zz": 0.5}, "trial_id", "val_predictions.parquet")
