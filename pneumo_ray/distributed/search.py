"""Optuna as Tune's searcher, on Optuna's own storage.

Each experiment's study lives in `results/<name>/optuna.db` (Optuna's RDB storage on SQLite; Tune's
searcher runs in the driver, so there is one writer) under the experiment's name (`<name>-<model>`
for a sweep), so `optuna-dashboard sqlite:///results/<name>/optuna.db` shows a running or finished
sweep and `optuna.load_study` reads it back. Each Optuna trial carries its Tune trial id as the user
attribute `tune_trial_id`, the key of trials.parquet.

Optuna and Tune's saved experiment state must agree after any stop: a trial Tune will run again
must be open in Optuna. Tune tells the searcher of a trial's end (Optuna records it at once) before
it saves its state, and a stop by SIGINT/SIGTERM lets Tune save once more (interrupts.py), so they
agree. A driver killed outright can leave either side a step ahead: `restore` and
`close_lost_trials` settle it on --resume.
"""

from __future__ import annotations

from pathlib import Path

import optuna
from ray.tune.search.optuna import OptunaSearch

from pneumo_ray.distributed import interrupts


class TaggedOptunaSearch(OptunaSearch):
    """OptunaSearch whose Optuna trials record the Tune trial id they ran as."""

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None and isinstance(config, dict):
            ot_trial.set_user_attr("tune_trial_id", trial_id)
        return config

    def restore(self, checkpoint_path: str) -> None:
        """Tune's saved searcher, with every trial the Optuna study has closed since taken as finished.
        A driver killed outright (SIGKILL) in the second or two between a trial's end, which Optuna
        records at once, and Tune's next save leaves Tune's state a step behind: Tune runs that trial
        again from its checkpoint, and Optuna keeps what it was told (a closed Optuna trial cannot be
        updated: its reports would fail with UpdateFinishedTrialError)."""
        super().restore(checkpoint_path)
        closed = {t.number for t in self._ot_study.get_trials(deepcopy=False) if t.state.is_finished()}
        for trial_id, ot_trial in self._ot_trials.items():
            if ot_trial.number in closed:
                self._completed_trials.add(trial_id)


def close_lost_trials(db: Path, study_name: str, unfinished: set[str]) -> int:
    """Close (as failed) the trials of the stored study that are still running but that Tune will not
    run: those with no Tune trial among `unfinished` (the Tune trial ids an interrupt cut, which
    --resume continues). They are proposals Tune never saved, made just before a driver was killed
    outright. Returns how many were closed."""
    study = optuna.load_study(study_name=study_name, storage=storage_url(db))
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    lost = [t for t in running if t.user_attrs.get("tune_trial_id") not in unfinished]
    for t in lost:
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    return len(lost)


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
    with interrupts.shielded():  # a new optuna.db gets its tables here: not to be cut halfway by Ctrl-C
        storage = optuna.storages.RDBStorage(storage_url(db))
        if study_name in {s.study_name for s in optuna.get_all_study_summaries(storage)}:
            optuna.delete_study(study_name=study_name, storage=storage)
    return TaggedOptunaSearch(seed=seed, study_name=study_name, storage=storage)
