"""Optuna as Tune's searcher, on Optuna's own storage.

Each experiment's study lives in `results/<name>/optuna.db` (Optuna's RDB storage on SQLite; Tune's
searcher runs in the driver, so there is one writer) under the experiment's name (`<name>-<model>`
for a sweep), so `optuna-dashboard sqlite:///results/<name>/optuna.db` shows a running or finished
sweep and `optuna.load_study` reads it back. Each Optuna trial carries its Tune trial id as the user
attribute `tune_trial_id`, the key of trials.parquet.
"""

from __future__ import annotations

from pathlib import Path

import optuna
from ray.tune.search.optuna import OptunaSearch


class TaggedOptunaSearch(OptunaSearch):
    """OptunaSearch whose Optuna trials record the Tune trial id they ran as."""

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None and isinstance(config, dict):
            ot_trial.set_user_attr("tune_trial_id", trial_id)
        return config


def storage_url(db: Path) -> str:
    return f"sqlite:///{Path(db).resolve()}"


def optuna_search(seed: int, study_name: str, db: Path | None) -> TaggedOptunaSearch:
    """TPE (seeded) on the RDB storage in `db`, study `study_name`; in memory when `db` is None.

    A fresh search replaces a study of the same name left by an earlier, unfinished run (TPE would
    otherwise learn from trials this experiment did not run); `--resume` restores the searcher from
    Tune's experiment state instead, and that keeps pointing at the same stored study."""
    if db is None:
        return TaggedOptunaSearch(seed=seed)
    db.parent.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(storage_url(db))
    if study_name in {s.study_name for s in optuna.get_all_study_summaries(storage)}:
        optuna.delete_study(study_name=study_name, storage=storage)
    return TaggedOptunaSearch(seed=seed, study_name=study_name, storage=storage)
