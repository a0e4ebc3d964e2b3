"""Optuna's stored study and Tune's saved experiment state agree after any stop of a driver."""

from __future__ import annotations


def test_optuna_and_tune_settle_after_a_driver_killed_outright(tmp_path):
    """A driver killed outright (SIGKILL) leaves Tune's saved searcher a step behind Optuna's study:
    a trial that Optuna closed at its end, which Tune runs again from its checkpoint (its reports
    failed with UpdateFinishedTrialError: the --resume of issue 22), and a proposal Tune never saved.
    The restored searcher takes the first as finished; close_lost_trials closes the second, and
    keeps open the trial an interrupt cut."""
    import optuna
    from ray import tune

    from pneumo_ray.distributed.search import TaggedOptunaSearch, close_lost_trials, optuna_search

    db = tmp_path / "optuna.db"
    searcher = optuna_search(0, "s", db)
    searcher.set_search_properties("best_val_auc", "max", {"lr": tune.uniform(0, 1)})
    for trial_id in ("cut", "ended"):
        searcher.suggest(trial_id)
        searcher.on_trial_result(trial_id, {"best_val_auc": 0.5, "training_iteration": 1})
    searcher.save(str(tmp_path / "searcher.pkl"))  # Tune's last save
    searcher.on_trial_complete("ended", {"best_val_auc": 0.6})  # Optuna records it at once
    searcher.suggest("lost")  # proposed, never saved by Tune

    restored = TaggedOptunaSearch()
    restored.restore(str(tmp_path / "searcher.pkl"))
    restored.on_trial_result("ended", {"best_val_auc": 0.7, "training_iteration": 2})  # Tune runs it again
    restored.on_trial_complete("ended", {"best_val_auc": 0.7})
    restored.on_trial_result("cut", {"best_val_auc": 0.55, "training_iteration": 2})  # goes on
    assert close_lost_trials(db, "s", unfinished={"cut"}) == 1
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{db}")
    state = {t.user_attrs["tune_trial_id"]: (t.state.name, t.value) for t in study.trials}
    assert state == {"cut": ("RUNNING", None), "ended": ("COMPLETE", 0.6), "lost": ("FAIL", None)}
    restored.on_trial_complete("cut", {"best_val_auc": 0.55})
    assert optuna.load_study(study_name="s", storage=f"sqlite:///{db}").trials[0].state.name == "COMPLETE"
