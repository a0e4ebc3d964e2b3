"""Hyper-parameter importance from the trial table: Optuna's fANOVA on a study rebuilt from the
finished trials (one study per model, as the sweep runs one search per model), with the search
space of run.json. A parameter the sweep did not vary gets importance 0 and is marked fixed."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from pneumo_ray.config.search import SEARCH


def search_space(trials: pd.DataFrame, sweep: dict | None = None) -> dict:
    """{param: optuna distribution}: run.json's ranges, widened to the values the trials hold (a
    resumed sweep may have changed them); pretrain_lr is categorical (trials share pre-trainings)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    sweep = sweep or {}
    space = {}
    for s in SEARCH:  # run.json's sweep holds each range under its SweepConfig field
        p = s.field
        if p not in trials:
            continue
        values = trials[p].dropna().astype(float)
        if s.categorical:
            choices = sorted(set(map(float, sweep.get(s.range_field) or [])) | set(values))
            space[p] = CategoricalDistribution(choices or [math.nan])
            continue
        lo, hi = sweep.get(s.range_field) or (values.min(), values.max())
        lo, hi = min(float(lo), values.min()), max(float(hi), values.max())
        if hi <= lo:
            hi = lo * 1.001 + 1e-12
        space[p] = FloatDistribution(lo, hi, log=bool(s.log and lo > 0))
    return space


def importance(trials: pd.DataFrame, sweep: dict | None = None, seed: int = 0) -> pd.DataFrame:
    """Rows (model, param, importance, fixed, method, n_trials). fANOVA where Optuna can fit it,
    else |Spearman correlation| with validation AUC, normalised to sum to 1."""
    rows = []
    for model, g in trials.groupby("model", sort=True):
        g = g.dropna(subset=["best_val_auc"])
        params = [s.field for s in SEARCH if s.field in g]
        varied = [p for p in params if g[p].nunique() > 1]
        scores, method = {}, "fANOVA (Optuna)"
        if len(g) >= 2 and varied:
            try:
                scores = _fanova(g, search_space(g, sweep), varied, seed)
            except Exception as e:  # noqa: BLE001 - too few or degenerate trials: use the plain fallback
                method = f"|Spearman ρ| (fANOVA failed: {type(e).__name__})"
                scores = _spearman(g, varied)
        for p in params:
            rows.append(
                dict(
                    model=model,
                    param=p,
                    importance=float(scores.get(p, 0.0)),
                    fixed=p not in varied,
                    method=method if varied else "none (nothing varied)",
                    n_trials=len(g),
                )
            )
    return pd.DataFrame(rows, columns=["model", "param", "importance", "fixed", "method", "n_trials"])


def _fanova(g: pd.DataFrame, space: dict, varied: list[str], seed: int) -> dict:
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    dists = {p: space[p] for p in varied}
    for row in g.to_dict("records"):
        study.add_trial(
            optuna.trial.create_trial(
                params={p: float(row[p]) for p in varied}, distributions=dists, value=float(row["best_val_auc"])
            )
        )
    scores = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=seed))
    return {k: float(v) for k, v in scores.items()}


def _spearman(g: pd.DataFrame, varied: list[str]) -> dict:
    r = {p: abs(float(g[p].rank().corr(g["best_val_auc"].rank()))) for p in varied}
    r = {p: 0.0 if np.isnan(v) else v for p, v in r.items()}
    total = sum(r.values())
    return {p: v / total if total else 0.0 for p, v in r.items()}
