"""SIGINT (Ctrl-C) and SIGTERM (`ray job stop`, batch schedulers, spot preemption) of study.sweep and
study.ablate, through the commands a user types, on a real local Ray: exit 130/143 with one line
`interrupted: N of M trials finished; resume with: <command>`, the Parquet tables consistent, the
trials cut recorded as `interrupted` (never ASHA's `early_stopped`), Optuna's study and Tune's saved
state in agreement, and the printed command continuing each cut trial from its last checkpoint:
every epoch once, every trial completed or stopped by ASHA at a rung in the end. Signals go to the
driver's process group, as Ctrl-C in a terminal sends them. Each driver run serves several checks:
one sweep is stopped six ways in a row (SIGINT and SIGTERM at the start, mid-trial, in the test
evaluation; one of them twice), one ablation three ways (its search, its seeds)."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from conftest import reported, start_study
from test_sweep import assert_optuna_study_matches

from pneumo_ray.distributed import interrupts
from pneumo_ray.storage.results import read_results

ROOT = Path(__file__).resolve().parents[1]


class Run:
    """A study command started as a user starts it (its own process group), its output read line by
    line as it comes, to be signalled at a chosen moment."""

    def __init__(self, command: str, *args: str, env: dict, cache_dir: Path) -> None:
        self.p = start_study(command, *args, env={**env, "PYTHONUNBUFFERED": "1"}, cache_dir=cache_dir)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.p.stdout), daemon=True)
        self._reader.start()

    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, ready: Callable[[], object], what: str, timeout: float = 300) -> None:
        deadline = time.time() + timeout
        while not ready():
            assert self.p.poll() is None, f"ended before {what}:\n{self.text()[-3000:]}"
            assert time.time() < deadline, f"{what} did not happen within {timeout:g} s:\n{self.text()[-3000:]}"
            time.sleep(0.1)

    def printed(self, text: str) -> Callable[[], bool]:
        return lambda: any(text in line for line in self.lines)

    def signal(self, sig: int) -> None:
        os.killpg(self.p.pid, sig)  # the whole group, as Ctrl-C in a terminal

    def finish(self, timeout: float = 600) -> tuple[int, str]:
        rc = self.p.wait(timeout=timeout)
        self._reader.join(timeout=30)
        return rc, self.text()


def resume_line(out: str, sig: int, total: int) -> list[str]:
    """The one `interrupted:` line, last; returns its resume command (as argv, with this Python)."""
    assert "Traceback" not in out, out[-4000:]
    last = out.strip().splitlines()[-1]
    assert sum(line.startswith("interrupted") for line in out.splitlines()) == 1, out[-3000:]
    m = re.fullmatch(rf"interrupted: (\d+) of {total} trials finished; resume with: (.*)", last)
    assert m, out[-3000:]
    assert f"{signal.Signals(sig).name}: stopping; the state is saved for --resume" in out
    argv = shlex.split(m.group(2))
    assert argv[:2] == ["python", "-m"] and "--resume" in argv
    return argv[2:]


def interrupted(run: Run, sig: int, total: int) -> list[str]:
    """Signal `run`, check the exit status and the line; returns the resume command's arguments."""
    run.signal(sig)
    rc, out = run.finish()
    assert rc == 128 + sig, out[-3000:]
    return resume_line(out, sig, total)


def consistent(folder: Path, epochs: int) -> pd.DataFrame:
    """trials.parquet and epochs.parquet agree: each trial once, its epochs 1..epochs_run each once;
    the stop reasons are the four there are. Returns the trials."""
    res = read_results(folder)
    t, e = res.trials, res.epochs
    assert t.trial_id.is_unique and set(t.stop_reason) <= {"completed", "early_stopped", "interrupted", "error"}
    assert not e.duplicated(["trial_id", "epoch"]).any()
    got = e.groupby("trial_id").epoch.apply(lambda s: sorted(s.astype(int))).to_dict()
    for row in t.itertuples():
        assert got.get(row.trial_id, []) == list(range(1, row.epochs_run + 1)), (row.trial_id, got)
    assert t[t.stop_reason == "completed"].epochs_run.eq(epochs).all()
    assert t[t.stop_reason == "early_stopped"].epochs_run.lt(epochs).all()
    return t


def optuna_agrees(folder: Path, study_name: str, trials: pd.DataFrame) -> None:
    """Optuna's stored study and Tune's saved state: a trial cut (which --resume continues) is open in
    Optuna, a finished one closed with its value."""
    import optuna

    study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{folder / 'optuna.db'}")
    state = {t.user_attrs.get("tune_trial_id"): t.state.name for t in study.trials}
    for row in trials.itertuples():
        assert state[row.trial_id] == ("RUNNING" if row.stop_reason == "interrupted" else "COMPLETE"), (row, state)


SWEEP = ["--preset", "smoke", "--models", "cnn", "--num-samples", "2", "--epochs", "3", "--no-pretrain"]


def test_sweep_stopped_six_ways_then_resumed(tmp_path, cache_dir, ray_head):
    """One sweep of two CNN trials (3 epochs, ASHA at epochs 1 and 2), run seven times: stopped by
    SIGINT at the start (Tune's experiment starting), SIGINT and SIGTERM mid-trial (the second
    stop followed by a second Ctrl-C: out at once), SIGINT and SIGTERM during the test evaluation, each
    time continued with the command it printed; the last run finishes while a second sweep on the
    same --name is refused. Before all that, a lock left by a killed command is taken over."""
    env = ray_head[1]
    folder, exp = tmp_path / "intr", tmp_path / "intr" / "ray" / "intr-cnn"
    start = [*SWEEP, "--name", "intr", "--results", str(tmp_path)]
    stale = plant_stale_lock(folder)

    s1 = Run("study.sweep", *start, env=env, cache_dir=cache_dir)
    s1.wait_for(s1.printed("=== cnn"), "the start of the search")
    resume = interrupted(s1, signal.SIGINT, 2)
    assert resume == ["study.sweep", "--resume", "--name", "intr", "--results", str(tmp_path)]
    assert f"warning: {folder}: took over the lock left by pid {stale} " in s1.text()
    run = json.loads((folder / "run.json").read_text())
    assert run["status"] == "interrupted" and run["sessions"][-1]["interrupted_by"] == "SIGINT"

    def mid_trial(sig: int, second: int | None = None) -> pd.DataFrame:
        """Resume, stop with `sig` once an epoch of this run is reported (short of the last)."""
        seen = {(x["trial_id"], x["epoch"]) for x in reported(exp)}
        r = Run(*resume, env=env, cache_dir=cache_dir)
        r.wait_for(lambda: {(x["trial_id"], x["epoch"]) for x in reported(exp)} - seen, "an epoch reported")
        if second is None:
            assert interrupted(r, sig, 2) == resume
            return consistent(folder, 3)
        r.signal(sig)
        r.wait_for(r.printed("stopping; the state is saved"), "the first signal taken")
        t0 = time.time()
        r.signal(second)  # a second Ctrl-C while it shuts down: out at once
        rc, out = r.finish()
        assert rc == 128 + sig and time.time() - t0 < 5, out[-3000:]
        assert (
            out.strip().splitlines()[-1]
            == f"interrupted again: stopped at once; resume with: {shlex.join(['python', '-m', *resume])}"
        )
        return consistent(folder, 3)

    t = mid_trial(signal.SIGINT)
    cut = t[t.stop_reason == "interrupted"]
    assert len(cut) and cut.epochs_run.max() >= 1, t  # cut in the middle, not labelled as ASHA's stop
    optuna_agrees(folder, "intr-cnn", t)
    first_epochs = read_results(folder).epochs.set_index(["trial_id", "epoch"])
    mid_trial(signal.SIGTERM, second=signal.SIGINT)

    for sig in (signal.SIGINT, signal.SIGTERM):  # during the test evaluation
        r = Run(*resume, env=env, cache_dir=cache_dir)
        r.wait_for(r.printed("evaluating the best-validation checkpoint"), "the test evaluation")
        assert interrupted(r, sig, 2) == resume
        assert "interrupted: 2 of 2 trials finished" in r.text()
        t = consistent(folder, 3)
        assert set(t.stop_reason) <= {"completed", "early_stopped"}
        # cut during the evaluation: no test metrics; a smoke evaluation can end before the signal lands
        # (then its rows are written whole and the stop comes after them): never some trials only
        assert t.test_auc.isna().all() or t.test_auc.between(0, 1).all(), t.test_auc
        optuna_agrees(folder, "intr-cnn", t)

    last = Run(*resume, env=env, cache_dir=cache_dir)
    last.wait_for(last.printed("sweep intr: preparing data"), "the last run's start")  # it holds the lock
    for extra in ([], ["--resume"]):  # a second command on the same --name: refused, the running one untouched
        second = subprocess.run(
            [sys.executable, "-m", "study.sweep", "--name", "intr", "--results", str(tmp_path), *extra],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 2 and second.stderr.startswith(
            f"error: --name intr: {folder} is in use by pid {last.p.pid} on "
        ), second.stderr
    rc, out = last.finish()
    assert rc == 0, out[-4000:]
    res = read_results(folder)
    t = consistent(folder, 3)
    assert len(t) == 2 and t.error.isna().all() and t.test_auc.between(0, 1).all()
    assert t[t.stop_reason == "early_stopped"].epochs_run.isin([1, 2]).all()  # ASHA's rungs
    assert res.predictions.groupby("trial_id").size().eq(624).all()
    assert_optuna_study_matches(folder, "intr-cnn", t)
    # the epochs reported before the first mid-trial stop were not trained again (the stop waited for
    # the checkpoint of an epoch just reported: test_a_stop_between_an_epochs_report_and_its_checkpoint…)
    again = res.epochs.set_index(["trial_id", "epoch"]).reindex(first_epochs.index)
    assert again.reported_at.equals(first_epochs.reported_at), (again.reported_at, first_epochs.reported_at)
    every = [(x["trial_id"], x["epoch"]) for x in reported(exp)]
    assert len(every) == len(set(every)), every  # Tune's own record: each epoch reported once
    sessions = res.run["sessions"]
    assert [s.get("interrupted_by") for s in sessions] == ["SIGINT", "SIGINT", None, "SIGINT", "SIGTERM", None]
    assert res.run["status"] == "finished" and not (folder / "lock.json").exists()


def plant_stale_lock(folder: Path) -> int:
    """A lock on `folder` left by a command killed outright; returns its pid."""
    code = f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        from pathlib import Path
        from pneumo_ray.storage.lock import FolderLock
        FolderLock(Path({str(folder)!r}), "python -m study.sweep --name intr").__enter__()
        os.kill(os.getpid(), signal.SIGKILL)
    """
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True)
    assert p.returncode == -signal.SIGKILL and (folder / "lock.json").exists(), p.stderr
    return json.loads((folder / "lock.json").read_text())["pid"]


def test_ablation_stopped_in_its_search_and_its_seeds_then_resumed(tmp_path, cache_dir, ray_head):
    """One arm (2 seeds after its own search of 2 trials), stopped by SIGTERM at the start of the
    search, SIGINT mid-search and SIGTERM mid-seeds, each time continued with the printed command."""
    env = ray_head[1]
    folder, ray_dir = tmp_path / "abl", tmp_path / "abl" / "ray"
    args = ["--preset", "smoke", "--models", "cnn", "--seeds", "2", "--epochs", "2", "--tune", "2", "--no-pretrain"]
    args += ["--name", "abl", "--results", str(tmp_path)]
    a1 = Run("study.ablate", *args, env=env, cache_dir=cache_dir)
    a1.wait_for(a1.printed("=== arm no-pretrain, cnn: its own search"), "the start of the search")
    resume = interrupted(a1, signal.SIGTERM, 4)
    assert resume == ["study.ablate", *args, "--resume"]

    search, seeds = ray_dir / "tune-no-pretrain-cnn", ray_dir / "no-pretrain-cnn-seeds-0_1"
    a2 = Run(*resume, env=env, cache_dir=cache_dir)
    a2.wait_for(lambda: reported(search), "a search epoch reported")
    assert interrupted(a2, signal.SIGINT, 4) == resume
    tuning = pd.read_parquet(folder / "ablation_tuning.parquet")
    assert "interrupted" in set(tuning.stop_reason) and not (folder / "ablations.parquet").exists()
    optuna_agrees(folder, "tune-no-pretrain-cnn", tuning)

    a3 = Run(*resume, env=env, cache_dir=cache_dir)
    a3.wait_for(lambda: reported(seeds), "a seed's epoch reported")
    assert interrupted(a3, signal.SIGTERM, 4) == resume
    tuning = pd.read_parquet(folder / "ablation_tuning.parquet")
    assert set(tuning.stop_reason) <= {"completed", "early_stopped"} and len(tuning) == 2
    assert not (folder / "ablations.parquet").exists()  # an arm's seeds are written once all have finished

    rc, out = Run(*resume, env=env, cache_dir=cache_dir).finish()
    assert rc == 0, out[-4000:]
    abl = pd.read_parquet(folder / "ablations.parquet")
    assert sorted(abl.seed) == [0, 1] and abl.error.isna().all() and abl.test_auc.between(0, 1).all()
    assert abl.epochs_run.eq(2).all()
    epochs = pd.read_parquet(folder / "ablation_tuning_epochs.parquet")
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    assert_optuna_study_matches(folder, "tune-no-pretrain-cnn", pd.read_parquet(folder / "ablation_tuning.parquet"))
    seeds_reported = [(x["trial_id"], x["epoch"]) for x in reported(seeds)]
    assert len(seeds_reported) == len(set(seeds_reported)) == 4  # each seed's epochs once
    run = json.loads((folder / "run.json").read_text())
    assert [s.get("interrupted_by") for s in run["sessions"]] == ["SIGTERM", "SIGINT", "SIGTERM", None]


SESSION = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
from pneumo_ray.distributed import interrupts

folder, mode = Path(sys.argv[1]), sys.argv[2]
session = interrupts.Session(folder, total=4, resume="RESUME", again="AGAIN")

def body():
    session.hold("the test")
    if mode == "recorded":
        (folder / "run.json").write_text(json.dumps(dict(sessions=[dict(started="9999")])))
    print("ready", flush=True)
    if mode == "shield":
        with interrupts.shielded():
            print("writing", flush=True)
            time.sleep(1.5)
            (folder / "written").write_text("whole")
        interrupts.check()
    time.sleep(60)
    return 0

sys.exit(session.run(body))
"""


@pytest.mark.parametrize(
    "mode, signals, status, last",
    [
        ("plain", [signal.SIGTERM], 143, "interrupted: 0 of 4 trials finished; run again: AGAIN"),
        ("recorded", [signal.SIGINT], 130, "interrupted: 0 of 4 trials finished; resume with: RESUME"),
        ("shield", [signal.SIGINT], 130, "interrupted: 0 of 4 trials finished; run again: AGAIN"),
        ("shield", [signal.SIGTERM, signal.SIGINT], 143, "interrupted again: stopped at once; run again: AGAIN"),
    ],
)
def test_a_session_outside_tune(mode, signals, status, last, tmp_path):
    """The driver's session without Ray: a signal outside a Tune experiment stops the work at once,
    except a shielded write, which finishes first (also when a second signal comes during it)."""
    folder = tmp_path / "f"
    p = subprocess.Popen(
        [sys.executable, "-c", SESSION.format(root=str(ROOT)), str(folder), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert p.stdout.readline().strip() == "ready"
    if mode == "shield":
        assert p.stdout.readline().strip() == "writing"
    for sig in signals:
        p.send_signal(sig)
        time.sleep(0.2)
    out, err = p.communicate(timeout=60)
    assert p.returncode == status, err
    assert err.strip().splitlines()[-1] == last
    assert (folder / "written").exists() == (mode == "shield")
    assert not (folder / "lock.json").exists()
    if mode == "recorded":
        run = json.loads((folder / "run.json").read_text())
        assert run["status"] == "interrupted" and run["sessions"][-1]["interrupted_by"] == "SIGINT"


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


BETWEEN = """
import os, signal, sys, tempfile
sys.path.insert(0, {root!r})
from pathlib import Path
import ray
from ray import tune
from pneumo_ray.distributed import interrupts
from pneumo_ray.distributed.console import TrialLines
from pneumo_ray.distributed.trials import tune_config, tune_run_config

storage = sys.argv[1]
exp, mark = os.path.join(storage, "between"), Path(storage, "signalled")

def trainable(config):
    start = 0
    if (ckpt := tune.get_checkpoint()) is not None:
        with ckpt.as_directory() as d:
            start = int(Path(d, "epoch").read_text())
    for epoch in range(start + 1, 4):
        with tempfile.TemporaryDirectory() as d:
            Path(d, "epoch").write_text(str(epoch))
            tune.report(dict(epoch=epoch), checkpoint=tune.Checkpoint.from_directory(d))

class SignalOnReport(tune.Callback):
    # SIGINT while Tune takes epoch 2's report: its checkpoint is saved in a later step of Tune's loop
    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result["epoch"] == 2 and not mark.exists():
            mark.touch()
            os.kill(os.getpid(), signal.SIGINT)

def body():
    ray.init(address=os.environ["RAY_ADDRESS"], logging_level="ERROR", log_to_driver=False)
    interrupts.reinstall()
    run = tune.with_resources(trainable, dict(cpu=1))
    if os.path.exists(os.path.join(exp, "tuner.pkl")):
        tuner = tune.Tuner.restore(exp, trainable=run, resume_unfinished=True)
    else:
        lines = TrialLines("t", epochs=3, num_samples=1, concurrency=1)
        config = tune_run_config(
            "between", storage, verbose=False, max_failures=0, lines=lines, callbacks=[SignalOnReport()]
        )
        tuner = tune.Tuner(run, tune_config=tune_config(1), run_config=config)
    grid, cut = interrupts.fit(tuner, exp)
    interrupts.check()
    return 0

sys.exit(interrupts.Session(Path(storage), total=1, resume="RESUME", again="AGAIN").run(body))
"""


def test_a_stop_between_an_epochs_report_and_its_checkpoint_trains_nothing_again(tmp_path, ray_head):
    """Tune takes an epoch's report in one step of its loop and commits the checkpoint reported with it
    in a later one. A signal landing between the two (sent here from a callback while Tune takes the
    report) waits for the commit before Tune saves its state and stops, so --resume goes on after that
    epoch instead of training it again from the checkpoint before."""
    env, storage = ray_head[1], tmp_path / "s"
    storage.mkdir()
    argv = [sys.executable, "-c", BETWEEN.format(root=str(ROOT)), str(storage)]
    first = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 130, first.stdout[-2000:] + first.stderr[-3000:]
    assert (storage / "signalled").exists() and "Traceback" not in first.stderr
    last = first.stderr.strip().splitlines()[-1]  # this script writes no run.json: `run again`
    assert last == "interrupted: 0 of 1 trials finished; run again: AGAIN"
    second = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    assert [x["epoch"] for x in reported(storage / "between")] == [1, 2, 3]  # epoch 2 was not trained again


def test_a_signal_waits_for_the_checkpoint_on_its_way_and_a_second_one_does_not(monkeypatch):
    """The order of things inside the driver, without Ray (Tune's SIGUSR1 handler replaced by a
    recorder): a first signal during an experiment with StopBetweenSaves asks Tune nothing while a
    trial's checkpoint is on its way, then once, after the first step that leaves none; a second
    signal asks Tune at once (no more waiting), and exits only after Tune's last save."""
    asked = []
    monkeypatch.setattr(signal, "getsignal", lambda s: (lambda *a: asked.append(a)) if s == signal.SIGUSR1 else None)
    for second in (False, True):
        interrupts._reset()
        interrupts._NOW.in_tune = True
        interrupts.tune_waits()
        interrupts.tune_step_ended(False)  # no signal yet: nothing asked
        interrupts._on_signal(signal.SIGINT, None)
        interrupts.tune_step_ended(True)
        assert asked == [] and interrupts.requested()
        if second:
            interrupts._on_signal(signal.SIGINT, None)  # not safe yet (Tune has not saved): no exit
            assert len(asked) == 1 and interrupts._NOW.leave
        else:
            interrupts.tune_step_ended(False)
            interrupts.tune_step_ended(False)
            assert len(asked) == 1
        asked.clear()
    interrupts._reset()
