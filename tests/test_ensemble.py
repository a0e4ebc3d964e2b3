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
    """The selection written out plainly: logits shifted and averaged; the first pick the best single
    model by scikit-learn's AUC; then the addition with the lowest log-loss at equal class priors
    (scikit-learn's log_loss with balanced sample weights), ties to the smallest id, stopping when the
    best addition does not lower it."""
    from sklearn.metrics import log_loss
    from sklearn.utils.class_weight import compute_sample_weight

    z = logit(probs) - logit(thr)[:, None]
    w = compute_sample_weight("balanced", y)

    def loss(score):
        return log_loss(y, 1 / (1 + np.exp(-score)), sample_weight=w, labels=[0, 1])

    first = int(np.argmax(np.round([roc_auc_score(y, r) for r in z], 12)))
    picks, losses, total = [first], [loss(z[first])], z[first].copy()
    while len(picks) < max_k:
        trial = [loss((total + z[i]) / (len(picks) + 1)) for i in range(len(z))]
        i = int(np.argmin(np.round(trial, 12)))
        if not round(trial[i], 12) < round(losses[-1], 12):
            break
        picks.append(i)
        losses.append(trial[i])
        total = total + z[i]
    return picks, losses


@pytest.mark.parametrize("seed", range(6))
def test_greedy_selection_matches_a_plain_recomputation(seed):
    rng = np.random.default_rng(seed)
    probs, thr, y = _candidates(rng, 7, 60, 140, spread=1.5)
    sel = select(_scores(probs, thr, y), 8)
    picks, losses = _greedy_by_hand(probs, thr, y, 8)
    assert sel.losses == pytest.approx(losses, abs=1e-9)
    got = [m for m, c in zip(sel.members, sel.counts) for _ in range(c)]
    assert sorted(got) == sorted(f"t{i:02d}" for i in picks)
    assert sel.members[0] == f"t{picks[0]:02d}" and sel.k == len(picks) <= 8
    assert all(b < a for a, b in zip(losses, losses[1:]))  # each pick lowered the validation log-loss
    # the first pick is the best single model by validation AUC, and the AUCs are the picks' own
    single = [roc_auc_score(y, p) for p in probs]
    assert sel.best_single_val_auc == pytest.approx(max(single), abs=1e-12)
    z = logit(probs) - logit(thr)[:, None]
    running = np.cumsum([z[i] for i in picks], axis=0)
    assert sel.steps == pytest.approx([roc_auc_score(y, r) for r in running], abs=1e-12)


def test_selection_grows_past_a_saturated_validation_auc():
    """Where validation AUC cannot rise any more (the real data: 0.998), the log-loss still sees
    which additions help: the selection builds an ensemble there."""
    rng = np.random.default_rng(21)
    probs, thr, y = _candidates(rng, 5, 200, 600, spread=0.8)
    probs = 1 / (1 + np.exp(-(logit(probs) + 3.0 * (2 * y - 1))))  # nearly separable: AUC ≈ 0.999+
    sel = select(_scores(probs, thr, y), 5)
    assert sel.best_single_val_auc > 0.995 and sel.k >= 2
    assert all(b < a for a, b in zip(sel.losses, sel.losses[1:]))


def test_ties_go_to_the_first_id_and_the_cap_holds():
    rng = np.random.default_rng(0)
    probs, thr, y = _candidates(rng, 3, 40, 60, spread=2.0)
    good = _candidates(np.random.default_rng(1), 1, 40, 60, spread=0.3)[0][0]  # the best single model
    same = np.stack([good, good, probs[0], probs[1]])  # "b" and "a" score identically
    s = _scores(same, [0.5, 0.5, 0.4, 0.6], y, ids=["b", "a", "c", "d"])
    sel = select(s, 1)
    assert sel.members == ("a",) and sel.k == 1 and sel.max_k == 1
    assert select(s, 6).best_single == "a"
    # copies of the best model cannot lower its log-loss: K = 1
    s2 = _scores(np.vstack([good, good]), [0.5, 0.5], y, ids=["p", "q"])
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


# --- a results folder: the drivers' tables, study.ensemble and the report (no Ray) -----------------


def _with_validation(folder, n_val: int = 90, seed: int = 0):
    """val_predictions.parquet for every finished trial of a report-test sweep folder, and each
    trial's best_val_auc made the AUC of those predictions (as a sweep records it)."""
    rng = np.random.default_rng(seed)
    every = pd.read_parquet(folder / "trials.parquet")
    trials = every.dropna(subset=["best_val_auc"])
    y = (np.arange(n_val) % 3 != 0).astype(int)
    shared = rng.normal(size=n_val)
    rows = []
    for t in trials.itertuples():
        z = 4 * t.best_val_auc * (y - 0.5) + shared + rng.normal(size=n_val)
        p = (1 / (1 + np.exp(-z.astype(np.float32)))).astype(float)
        rows.append(
            pd.DataFrame(
                dict(trial_id=t.trial_id, model=t.model, path=[f"val/{j:04d}" for j in range(n_val)], label=y)
            ).assign(name=lambda f: f.path, probability=p)
        )
    val = pd.concat(rows)
    val.to_parquet(folder / "val_predictions.parquet")
    auc = {t: roc_auc_score(g.label, g.probability) for t, g in val.groupby("trial_id")}
    every.assign(best_val_auc=every.trial_id.map(auc)).to_parquet(folder / "trials.parquet")
    return folder


def test_the_folder_ensemble_never_reads_test_before_its_choice(tmp_path):
    """build_ensembles on a sweep folder, then on the same folder with predictions.parquet poisoned
    (labels flipped, probabilities replaced): the same members, counts and K; other test numbers."""
    from test_report import make_sweep

    from pneumo_ray.distributed.ensembles import build_ensembles

    folder = _with_validation(make_sweep(tmp_path, tmp_path / "cache", checkpoint=False))
    before = build_ensembles(folder, 5, n_boot=200, log=None).set_index("model")
    assert before.loc["cnn", "k"] >= 2 and set(before.index) == {"cnn", "densenet"}
    preds = pd.read_parquet(folder / "predictions.parquet")
    rng = np.random.default_rng(7)
    preds.assign(label=1 - preds.label, probability=rng.random(len(preds))).to_parquet(folder / "predictions.parquet")
    after = build_ensembles(folder, 5, n_boot=200, log=None).set_index("model")
    cols = ["members", "counts", "k", "val_auc_steps", "best_single"]
    pd.testing.assert_frame_equal(before[cols], after[cols])
    assert (before.test_auc != after.test_auc).all()
    # the ensemble tables replace their rows when rebuilt: one per model
    assert len(pd.read_parquet(folder / "ensemble.parquet")) == 2
    assert pd.read_parquet(folder / "ensemble_predictions.parquet").groupby("model").size().eq(120).all()


def test_k_1_of_a_folder_is_its_best_trial_and_the_report_shows_the_ensemble(tmp_path):
    from test_report import make_sweep

    from pneumo_ray.distributed.ensembles import build_ensembles
    from pneumo_ray.report.build import build_report

    folder = _with_validation(make_sweep(tmp_path, tmp_path / "cache", checkpoint=False))
    one = build_ensembles(folder, 1, n_boot=200, log=None).set_index("model")
    trials = pd.read_parquet(folder / "trials.parquet").set_index("trial_id")
    preds = pd.read_parquet(folder / "predictions.parquet")
    ens = pd.read_parquet(folder / "ensemble_predictions.parquet")
    for model in ("cnn", "densenet"):
        best = one.loc[model, "best_single"]
        assert best == trials[trials.model == model].best_val_auc.idxmax()  # the sweep's best trial
        mine = preds[preds.trial_id == best].sort_values("path")
        e = ens[ens.model == model].sort_values("path")
        assert (e.prediction.to_numpy() == mine.prediction.to_numpy()).all()
        assert one.loc[model, "test_auc"] == trials.loc[best, "test_auc"]
        assert one.loc[model, "test_accuracy"] == trials.loc[best, "test_accuracy"]
    build_ensembles(folder, 5, n_boot=200, log=None)
    report = build_report([folder], n_boot=200, images=False, log=None)
    labels = [c.label for c in report.candidates]
    assert any(lab.startswith("cnn ensemble (K = ") for lab in labels) and "cnn" in labels
    table = report.tables["ensembles"]
    assert len(table) == 4 and table["model"].str.startswith("best single trial").sum() == 2
    assert table["balanced accuracy"].str.contains(r"\[").all()
    lines = {ln.get_gid() for ln in report.figures["roc"].axes[0].get_lines() if ln.get_gid()}
    assert any(g.startswith("roc:cnn ensemble") for g in lines)


def test_study_ensemble_builds_a_finished_sweeps_ensemble_from_its_checkpoints(tmp_path, cache_dir):
    """A sweep folder written before validation predictions were kept: study.ensemble applies each
    best-validation checkpoint that is on this machine to validation (no training, no Ray), then builds
    the ensemble; trials whose checkpoint is elsewhere are left out, said by name."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from test_report import make_sweep

    folder = make_sweep(tmp_path, cache_dir)  # cnn trials have checkpoints, densenet trials none
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run(
        [sys.executable, "-m", "study.ensemble", str(folder), "--ensemble", "3", "--n-boot", "200"],
        cwd=root,
        env={**os.environ, "PNEUMO_RAY_CACHE": str(cache_dir)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    val = pd.read_parquet(folder / "val_predictions.parquet")
    assert sorted(val.trial_id.unique()) == [f"cnn{k:05d}" for k in range(5)]
    assert val.groupby("trial_id").size().nunique() == 1 and val.probability.between(0, 1).all()
    ens = pd.read_parquet(folder / "ensemble.parquet")
    assert list(ens.model) == ["cnn"] and ens.max_k.iloc[0] == 3 and 1 <= ens.k.iloc[0] <= 3
    assert "trial_id den00000: no checkpoint recorded; left out" in r.stdout
    assert "ensemble densenet: no candidate with validation and test predictions" in r.stdout
    # the random checkpoints are one model five times: no addition can raise validation AUC
    assert "cnn: K = 1 pick(s)" in r.stdout and "the validation chose the best single model alone" in r.stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{tmp}/nowhere"], "{tmp}/nowhere: no such results folder"),
        (["{tmp}"], "neither trials.parquet (a sweep) nor ablations.parquet (an ablation) is there"),
        (["{sweep}", "--ensemble", "0"], "--ensemble 0: the cap on the ensemble's picks must be a whole number from 1"),
        (["{sweep}", "--n-boot", "10"], "--n-boot 10: must be at least 100"),
        (["{sweep}", "--ensemble", "x"], "argument --ensemble: invalid int value: 'x'"),
    ],
)
def test_study_ensemble_mistakes_are_one_line(tmp_path, capsys, argv, message):
    from study import common, ensemble

    sweep = tmp_path / "s"
    sweep.mkdir()
    (sweep / "trials.parquet").write_bytes(b"")
    fill = dict(tmp=str(tmp_path), sweep=str(sweep))
    code = common.run_main(ensemble.main, [a.format(**fill) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert message.format(**fill) in err


def test_sweep_and_ablate_take_ensemble_k():
    from pneumo_ray.config.arms import AblationSpec
    from pneumo_ray.config.errors import FieldError
    from pneumo_ray.config.sweep import SweepConfig
    from study import ablate, sweep

    args = sweep.get_args_parser().parse_args(["--ensemble", "3"])
    assert args.ensemble == 3 and SweepConfig().ensemble == 5
    for argv, k in (([], 0), (["--ensemble"], 5), (["--ensemble", "2"], 2)):
        a = ablate.get_args_parser().parse_args(argv)
        assert ablate.specs(a)[1].ensemble == k
    with pytest.raises(FieldError, match="--ensemble -1: the cap on the ensemble's picks must be a whole number"):
        SweepConfig(ensemble=-1)
    with pytest.raises(FieldError, match="--ensemble 101"):
        AblationSpec(ensemble=101)
