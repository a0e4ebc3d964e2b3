"""Every user mistake is one line `error: …` naming the flag or path, exit status 2, before any
decoding or Ray, with nothing written: a table of mistakes per command, run in-process through
`run_main` with the expensive work patched to fail loudly (a missing check fails the row instead of
starting Ray), and a few rows as real subprocesses to prove the entry points. Also: the library
gets the same checks (the frozen configs), and a metric that cannot be computed says why."""

from __future__ import annotations

import importlib
import json
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pneumo_ray.analysis.metrics import MetricUndefined, binary_metrics, roc_auc
from pneumo_ray.config.arms import AblationSpec, Arm
from pneumo_ray.config.data import DataSpec
from pneumo_ray.config.errors import FieldError, UserError
from pneumo_ray.config.output import OutputSpec
from pneumo_ray.config.sweep import PRESETS, SweepConfig
from pneumo_ray.config.train import TrainConfig
from pneumo_ray.distributed import ablation as ablation_driver
from pneumo_ray.distributed.sweep import specs_from_run
from study import ablate, audit, common, reproduce, sweep, train

ROOT = Path(__file__).resolve().parents[1]
MAINS = {
    "train": train.main,
    "sweep": sweep.main,
    "ablate": ablate.main,
    "audit": audit.main,
    "reproduce": reproduce.main,
}
EXPENSIVE = (  # what a rejected command must never reach
    "pneumo_ray.distributed.sweep.run_sweep",
    "pneumo_ray.distributed.sweep.init_ray",
    "pneumo_ray.distributed.ablation.run_ablation",
    "pneumo_ray.distributed.ablation.init_ray",
    "pneumo_ray.distributed.ablation.print_summary",
    "pneumo_ray.distributed.ablation.load_study_data",
    "pneumo_ray.distributed.sweep.load_study_data",
    "pneumo_ray.data.study_data.load_study_data",
    "pneumo_ray.data.study_data.audit_sets",
    "pneumo_ray.train.protocol.run_study",
    "pneumo_ray.train.reproduce.load_study_data",
)
UNWRITABLE = "/proc/pneumo-ray-test/out"  # nothing can be created in /proc, not even by root

# (command, argv, what the one line must contain); {tmp}: the test's folder, {file}: a file in it,
# {res}: a results folder holding `broken` (damaged run.json), `odd` (run.json with invalid settings),
# `nosweep`, `typed`, `unknown`, `paths` (run.json without the sweep's settings, with a value of the
# wrong type, an unknown setting, a path that is not a string), `done` (a finished sweep) and `taken`
# (a file where a run's folder would go); and the ablation folders of DRIVER_ROWS (`world` lists them)
ROWS = [
    # study.train
    ("train", ["--image-size", "0"], "--image-size 0: the image size must be a whole number from 16 to 1024"),
    ("train", ["--image-size", "-64"], "--image-size -64: the image size must be"),
    ("train", ["--image-size", "100000"], "--image-size 100000: the image size must be a whole number from 16 to 1024"),
    (
        "train",
        ["--model", "densenet", "--image-size", "16"],
        "--image-size 16: the image size must be a whole number from 32",
    ),
    ("train", ["--epochs", "0"], "--epochs 0: the number of fine-tuning epochs must be a whole number, at least 1"),
    ("train", ["--pretrain-epochs", "-1"], "--pretrain-epochs -1: the number of pre-training epochs must be"),
    ("train", ["--batch-size", "0"], "--batch-size 0: the batch size must be a whole number, at least 1"),
    ("train", ["--lr", "-1e-3"], "--lr -0.001: the fine-tuning learning rate must be above 0"),
    ("train", ["--lr", "nan"], "--lr nan: the fine-tuning learning rate must be above 0"),
    ("train", ["--lr", "inf"], "--lr inf: the fine-tuning learning rate must be above 0"),
    ("train", ["--pretrain-lr", "0"], "--pretrain-lr 0: the pre-training learning rate must be above 0"),
    ("train", ["--val-fraction", "1"], "--val-fraction 1: the validation fraction must lie strictly between 0 and 1"),
    ("train", ["--val-fraction", "0"], "--val-fraction 0: the validation fraction"),
    ("train", ["--seed", "-1"], "--seed -1: the seed must be a whole number from 0 to 4294967295"),
    ("train", ["--aug-strength", "1.5"], "--aug-strength 1.5: the augmentation strength must be in [0, 1]"),
    ("train", ["--class-weight", "heavy"], "--class-weight heavy: give 'auto'"),
    ("train", ["--class-weight", "0"], "--class-weight 0: give 'auto'"),
    ("train", ["--no-pretrain", "--pretrain-epochs", "3"], "--no-pretrain and --pretrain-epochs 3 contradict"),
    ("train", ["--no-pretrain", "--freeze-backbone"], "--freeze-backbone: without pre-training"),
    ("train", ["--no-pretrain", "--allow-test-overlap"], "--allow-test-overlap: it changes which source images"),
    (
        "train",
        ["--freeze-backbone", "--data-root", "{tmp}"],
        "--freeze-backbone with --data-root but no --pretrain-root",
    ),
    ("train", ["--out", "{file}"], "--out {file}: is a file, not a folder"),
    ("train", ["--out", "{file}/run"], "--out {file}/run: lies under {file}, a file"),
    ("train", ["--out", UNWRITABLE], f"--out {UNWRITABLE}: cannot write in /proc"),
    ("train", ["--cache-dir", "{file}"], "--cache-dir {file}: is a file"),
    ("train", ["--data-root", "{tmp}/nope"], "--data-root {tmp}/nope: no such folder"),
    ("train", ["--epochs", "two"], "argument --epochs: invalid int value: 'two'"),
    ("train", ["--model", "resnet"], "argument --model: invalid choice: 'resnet'"),
    ("train", ["--compile", "fast"], "argument --compile: invalid choice: 'fast'"),
    ("train", ["--bogus"], "unrecognized arguments: --bogus (python -m study.train --help lists the flags)"),
    # study.sweep
    ("sweep", ["--epochs", "0"], "--epochs 0: the number of fine-tuning epochs"),
    ("sweep", ["--num-samples", "0"], "--num-samples 0: the number of trials per model must be"),
    ("sweep", ["--image-size", "2048"], "--image-size 2048: the image size must be a whole number from 16 to 1024"),
    ("sweep", ["--batch-size", "-4"], "--batch-size -4: the batch size must be"),
    ("sweep", ["--pretrain-epochs", "-1"], "--pretrain-epochs -1: the number of pre-training epochs"),
    ("sweep", ["--seed", "-1"], "--seed -1: the seed must be"),
    ("sweep", ["--models", "cnn,resnet"], "--models cnn,resnet: name cnn and/or densenet"),
    ("sweep", ["--models", ","], "--models '': name cnn and/or densenet"),
    (
        "sweep",
        ["--grace-period", "5", "--epochs", "2"],
        "--grace-period 5: the ASHA grace period must be a whole number from 1 to 2",
    ),
    ("sweep", ["--workers-per-trial", "0"], "--workers-per-trial 0: the number of Ray Train workers"),
    ("sweep", ["--cpus-per-trial", "0"], "--cpus-per-trial 0: the CPUs per trial must be a finite number above 0"),
    ("sweep", ["--cpus-per-trial", "-1"], "--cpus-per-trial -1: the CPUs per trial"),
    ("sweep", ["--gpus-per-trial", "-1"], "--gpus-per-trial -1: the GPUs per trial must be 0 or more"),
    ("sweep", ["--gpus-per-trial", "1.5"], "--gpus-per-trial 1.5: each of the 1 workers would get 1.5 GPUs"),
    ("sweep", ["--placement-strategy", "RANDOM"], "--placement-strategy RANDOM: choose PACK"),
    ("sweep", ["--max-concurrent", "-1"], "--max-concurrent -1: the cap on concurrent trials"),
    ("sweep", ["--lr-range", "1e-3,nan"], "--lr-range 1e-3,nan: fine-tuning learning rate values must be finite"),
    ("sweep", ["--lr-range", "1e-3,10"], "--lr-range 1e-3,10: fine-tuning learning rate must lie in [0, 1]"),
    ("sweep", ["--no-pretrain", "--pretrain-epochs", "2"], "--no-pretrain and --pretrain-epochs 2 contradict"),
    ("sweep", ["--no-pretrain", "--allow-test-overlap"], "--allow-test-overlap: it changes which source images"),
    ("sweep", ["--results", "{file}"], "--results {file}: is a file, not a folder"),
    ("sweep", ["--results", UNWRITABLE], f"--results {UNWRITABLE}: cannot write in /proc"),
    ("sweep", ["--results", "{res}", "--name", "a/b"], "--name a/b: a name, not a path"),
    ("sweep", ["--results", "{res}", "--name", ""], "--name '': give a name"),
    ("sweep", ["--results", "{res}", "--name", "taken"], "--name {res}/taken: is a file"),
    ("sweep", ["--results", "{res}", "--name", "x", "--storage", "{file}"], "--storage {file}: is a file"),
    ("sweep", ["--cache-dir", "{file}"], "--cache-dir {file}: is a file"),
    ("sweep", ["--results", "{res}", "--name", "done"], "{res}/done already holds a sweep; pass --resume"),
    ("sweep", ["--resume"], "--resume needs the --name of the interrupted sweep"),
    ("sweep", ["--results", "{res}", "--resume", "--name", "nope"], "--resume: {res}/nope/run.json not found"),
    ("sweep", ["--results", "{res}", "--resume", "--name", "broken"], "--resume: {res}/broken/run.json is damaged"),
    ("sweep", ["--results", "{res}", "--resume", "--name", "odd"], "is damaged (FieldError: --epochs 0:"),
    ("sweep", ["--results", "{res}", "--resume", "--name", "nosweep"], "{res}/nosweep/run.json is damaged (no 'sweep'"),
    ("sweep", ["--results", "{res}", "--resume", "--name", "typed"], "is damaged (TypeError: 'int' object is not"),
    ("sweep", ["--results", "{res}", "--resume", "--name", "unknown"], "is damaged (unknown sweep settings: bogus)"),
    ("sweep", ["--results", "{res}", "--resume", "--name", "paths"], "is damaged (args data_root: not a string)"),
    (
        "sweep",
        ["--results", "{res}", "--resume", "--name", "broken", "--epochs", "3", "--preset", "cpu"],
        "so --epochs, --preset would be ignored",
    ),
    ("sweep", ["--data-root", "{tmp}/nope"], "--data-root {tmp}/nope: no such folder"),
    ("sweep", ["--epochs", "2.5"], "argument --epochs: invalid int value: '2.5'"),
    ("sweep", ["--address", "nonsense:::"], "--address nonsense:::: not an address; give the head's host:port"),
    ("sweep", ["--address", "127.0.0.1:1"], "--address 127.0.0.1:1: no Ray cluster answers there"),
    # study.ablate
    ("ablate", ["--seeds", "0"], "--seeds 0: give the number of seeds per model"),
    ("ablate", ["--address", "10.0.0.1:http"], "--address 10.0.0.1:http: not an address"),
    ("ablate", ["--seeds", "-2"], "--seeds -2: give the number of seeds per model"),
    ("ablate", ["--seeds", "0,1"], "argument --seeds: invalid int value: '0,1'"),
    ("ablate", ["--tune", "0"], "--tune 0: the search budget must be a whole number, at least 1"),
    ("ablate", ["--tune", "2", "--from", "{res}"], "--tune and --from are two ways to choose the configuration"),
    ("ablate", ["--from", "{tmp}/nowhere"], "--from {tmp}/nowhere: no such folder"),
    ("ablate", ["--from", "{res}"], "--from {res}: no trials.parquet"),
    ("ablate", ["--split-seed", "-1"], "--split-seed -1: the seed must be"),
    ("ablate", ["--no-pretrain", "--allow-test-overlap"], "--allow-test-overlap changes the pre-training data"),
    ("ablate", ["--no-pretrain", "--freeze-backbone"], "--freeze-backbone with --no-pretrain"),
    ("ablate", ["--pretrain-epochs", "0"], "arm transfer pre-trains, but --pretrain-epochs is 0"),
    ("ablate", ["--epochs", "0"], "--epochs 0: the number of fine-tuning epochs"),
    ("ablate", ["--image-size", "0"], "--image-size 0: the image size"),
    ("ablate", ["--grace-period", "3"], "--grace-period 3: the ASHA grace period"),
    ("ablate", ["--cpus-per-trial", "0"], "--cpus-per-trial 0: the CPUs per trial"),
    ("ablate", ["--results", "{file}"], "--results {file}: is a file"),
    ("ablate", ["--results", "{res}", "--name", "../x"], "--name ../x: a name, not a path"),
    ("ablate", ["--results", "{res}", "--name", "broken"], "--name: {res}/broken/run.json is damaged"),
    ("ablate", ["--results", "{res}", "--name", "nope", "--resume"], "--resume: {res}/nope/run.json not found"),
    ("ablate", ["--cache-dir", "{file}"], "--cache-dir {file}: is a file"),
    ("ablate", ["--summarize", "{tmp}/nowhere"], "--summarize {tmp}/nowhere: no such folder"),
    # study.reproduce
    ("reproduce", ["{tmp}/nowhere"], "{tmp}/nowhere: no such results folder"),
    ("reproduce", ["{file}"], "{file}: no such results folder"),
    ("reproduce", ["{res}/broken"], "{res}/broken/run.json is damaged"),
    ("reproduce", ["{res}/done"], "{res}/done: no run.json"),
    ("reproduce", ["{res}/reproducible", "--seed", "7"], "--seed 7: not in this study; it has 0"),
    (
        "reproduce",
        ["{res}/reproducible", "--arm", "no-augment"],
        "--arm no-augment: not in this study; it has transfer",
    ),
    ("reproduce", ["{res}/reproducible", "--trial", "t1"], "--trial: {res}/reproducible is an ablation"),
    ("reproduce", ["{res}/reproducible", "--tolerance", "-1"], "--tolerance -1: a difference is never negative"),
    ("reproduce", ["{res}/reproducible", "--threads", "0"], "--threads 0: give 1 or more torch threads"),
    ("reproduce", ["{res}/odd"], "{res}/odd: no finished trial in trials.parquet"),
    ("ablate", ["--summarize", "{res}", "--no-pretrain"], "--summarize only reads {res}, so --no-pretrain would be"),
    # study.audit
    ("audit", ["--image-size", "0"], "--image-size 0: the image size must be a whole number from 16 to 1024"),
    ("audit", ["--image-size", "5000"], "--image-size 5000: the image size"),
    ("audit", ["--out", "{file}"], "--out {file}: is a file"),
    ("audit", ["--out", UNWRITABLE], f"--out {UNWRITABLE}: cannot write in /proc"),
    ("audit", ["--cache-dir", "{file}"], "--cache-dir {file}: is a file"),
    ("audit", ["--pretrain-root", "{tmp}/nope"], "--pretrain-root {tmp}/nope: no such folder"),
    ("audit", ["--patients"], "--patients needs --data-root"),
    ("audit", ["--image-size", "big"], "argument --image-size: invalid int value: 'big'"),
]


# mistakes study.ablate finds only in the results folder, in the driver (distributed/ablation.py)
# before it writes anything or starts Ray: run with the real run_ablation, the rest as above
DRIVER_ROWS = [
    (["--name", "other"], "--name {res}/other: holds arms run with other settings (image_size: 64 → 32)"),
    (["--name", "recorded", "--models", "cnn"], "arm transfer/cnn was run with another configuration (lr: 0.5 → 0.001"),
    (["--name", "halted", "--tune", "2"], "ray/tune-transfer-cnn: an interrupted search of arm transfer, cnn; pass"),
    (["--name", "halted-seeds", "--models", "cnn", "--seeds", "2"], "an interrupted run of arm transfer, cnn, seeds"),
    (["--name", "damaged"], "{res}/damaged/ablations.parquet: damaged or not a Parquet table"),
    (["--name", "x", "--from", "{res}/cnn-only"], "--from {res}/cnn-only: no finished densenet trial"),
    (["--name", "x", "--from", "{res}/done"], "--from {res}/done: {res}/done/trials.parquet: damaged or not a"),
]
RUN_JSONS = {  # <res>/<name>/run.json
    "broken": "{not json",
    "odd": {"sweep": {"epochs": 0}},
    "nosweep": {"settings": {}},
    "typed": {"sweep": {"models": 5}},
    "unknown": {"sweep": {"bogus": 1}},
    "paths": {"sweep": {}, "args": {"data_root": 7}},
    "other": {"settings": {"image_size": 64, "epochs": 2}},
    "reproducible": {"kind": "ablation", "settings": {}},
}


def _ablation_folders(res: Path) -> None:
    """The folders of DRIVER_ROWS: an arm's seed run at another lr, an interrupted search and seed
    run (a Tune experiment's tuner.pkl: all Tuner.can_restore reads), a damaged table, a sweep of cnn only."""
    cfg = Arm().apply(SweepConfig(**PRESETS["smoke"]).base_config("cnn")).replace(lr=0.5)
    (res / "recorded").mkdir()
    pd.DataFrame(
        [dict(arm="transfer", model="cnn", seed=0, config=json.dumps(cfg.to_dict()), config_source="defaults")]
    ).to_parquet(res / "recorded" / "ablations.parquet")
    for exp in ("halted/ray/tune-transfer-cnn", "halted-seeds/ray/transfer-cnn-seeds-0_1"):
        (res / exp).mkdir(parents=True)
        (res / exp / "tuner.pkl").write_bytes(b"")
    row = dict(arm="transfer", model="cnn", seed=0, config=json.dumps(cfg.to_dict()), error=None)
    pd.DataFrame([row]).to_parquet(res / "reproducible" / "ablations.parquet")
    (res / "damaged").mkdir()
    (res / "damaged" / "ablations.parquet").write_bytes(b"PAR1 truncated")
    (res / "cnn-only").mkdir()
    trial = dict(model="cnn", trial_id="t1", best_val_auc=0.8, lr=1e-3, aug_strength=0.5, class_weight_scale=1.0)
    pd.DataFrame([trial]).to_parquet(res / "cnn-only" / "trials.parquet")


@pytest.fixture
def world(tmp_path, monkeypatch) -> dict[str, str]:
    """A folder with a file, a results folder with damaged and finished runs, the working directory
    and the cache inside it; Ray, decoding and training patched to fail the test if reached."""
    (tmp_path / "file").write_text("not a folder")
    res = tmp_path / "res"
    for name, run in RUN_JSONS.items():
        (res / name).mkdir(parents=True)
        (res / name / "run.json").write_text(run if isinstance(run, str) else json.dumps(run))
    _ablation_folders(res)
    (res / "done").mkdir()
    (res / "done" / "trials.parquet").write_bytes(b"")
    (res / "taken").write_text("a file where a run's folder would go")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # the default results/ and --out land here, if anywhere
    monkeypatch.setenv("PNEUMO_RAY_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("PNEUMO_RAY_DEBUG", raising=False)
    patch_expensive(monkeypatch)
    return {"tmp": str(tmp_path), "file": str(tmp_path / "file"), "res": str(res)}


def patch_expensive(monkeypatch) -> None:
    """Every EXPENSIVE target made to fail the test if reached. All their modules are imported first: a
    module first imported between two patches binds the fake (`from … import load_study_data`) and keeps
    it after the test, and a later test in the same process then reaches the fake."""
    for target in EXPENSIVE:
        importlib.import_module(target.rpartition(".")[0])
    for target in EXPENSIVE:
        monkeypatch.setattr(target, _reached(target))


def _reached(target: str):
    def fail(*args, **kwargs):
        raise AssertionError(f"a rejected command reached {target}: its check is missing or too late")

    return fail


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _fill(text: str, world: dict[str, str]) -> str:
    return text.format(**world)


def _check_one_line(rc: int, stderr: str, expected: str) -> None:
    assert rc == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert expected in lines[0], lines[0]


@pytest.mark.parametrize("command, argv, expected", ROWS, ids=[f"{c} {' '.join(a)}" for c, a, _ in ROWS])
def test_mistake_is_one_line_before_any_work(command, argv, expected, world, capsys):
    tmp = Path(world["tmp"])
    before = _tree(tmp)
    rc = common.run_main(MAINS[command], [_fill(a, world) for a in argv])
    out, err = capsys.readouterr()
    _check_one_line(rc, err, _fill(expected, world))
    assert out == ""  # nothing started: no "preparing data", no "resuming"
    assert _tree(tmp) == before  # nothing written: no results folder, run.json, cache or probe left


REAL_RUN_ABLATION = ablation_driver.run_ablation  # before `world` patches it


@pytest.mark.parametrize("argv, expected", DRIVER_ROWS, ids=[" ".join(a) for a, _ in DRIVER_ROWS])
def test_mistake_in_the_results_folder_is_one_line_before_any_work(argv, expected, world, capsys, monkeypatch):
    monkeypatch.setattr("pneumo_ray.distributed.ablation.run_ablation", REAL_RUN_ABLATION)
    tmp = Path(world["tmp"])
    before = _tree(tmp)
    rc = common.run_main(ablate.main, ["--results", world["res"], *(_fill(a, world) for a in argv)])
    out, err = capsys.readouterr()
    _check_one_line(rc, err, _fill(expected, world))
    assert out == "" and _tree(tmp) == before


def test_a_local_run_asking_for_a_gpu_this_machine_lacks(world, capsys, monkeypatch):
    """Trials asking for more GPUs than a local Ray has would wait forever: said at once."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    for command in ("sweep", "ablate"):
        rc = common.run_main(MAINS[command], ["--gpus-per-trial", "1", "--results", world["res"], "--name", "g"])
        _check_one_line(rc, capsys.readouterr().err, "--gpus-per-trial 1: this machine has 0 GPU(s)")
    rc = common.run_main(sweep.main, ["--preset", "paper", "--results", world["res"], "--name", "g"])
    _check_one_line(rc, capsys.readouterr().err, "--gpus-per-trial 1 (the paper preset's): this machine has 0")
    # with a cluster named, the cluster's GPUs count, not this machine's: the check lets it through
    with pytest.raises(AssertionError, match="reached pneumo_ray.distributed.sweep.run_sweep"):
        common.run_main(sweep.main, ["--gpus-per-trial", "1", "--address", "ray://x:1", "--results", world["res"]])


def test_device_cuda_without_a_gpu(world, capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    rc = common.run_main(train.main, ["--device", "cuda"])
    _check_one_line(rc, capsys.readouterr().err, "--device cuda: torch sees no CUDA GPU on this machine")


def test_debug_keeps_the_traceback(world):
    with pytest.raises(FieldError, match="--epochs 0"):
        common.run_main(train.main, ["--epochs", "0", "--debug"])


SUBPROCESS_ROWS = [
    ("study.train", ["--image-size", "100000"], "--image-size 100000: the image size must be a whole number"),
    ("study.sweep", ["--results", "{file}", "--name", "x"], "--results {file}: is a file, not a folder"),
    ("study.ablate", ["--seeds", "0", "--results", "{res}"], "--seeds 0: give the number of seeds per model"),
]


@pytest.mark.parametrize("module, argv, expected", SUBPROCESS_ROWS, ids=[m for m, _, _ in SUBPROCESS_ROWS])
def test_the_real_entry_points(module, argv, expected, world):
    tmp = Path(world["tmp"])
    before = _tree(tmp)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [sys.executable, "-m", module, *(_fill(a, world) for a in argv)],
        cwd=tmp / "cwd",
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    _check_one_line(r.returncode, r.stderr, _fill(expected, world))
    assert r.stdout == "" and _tree(tmp) == before


# --- the library gets the same checks ------------------------------------------------------------

LIBRARY = [
    (lambda: TrainConfig(image_size=5000), "--image-size 5000"),
    (lambda: TrainConfig(lr=float("nan")), "--lr nan"),
    (lambda: TrainConfig(weight_decay=-1.0), "--weight-decay -1"),
    (lambda: SweepConfig(epochs=3, grace_period=4), "--grace-period 4"),
    (lambda: SweepConfig(reduction_factor=1), "reduction_factor 1"),
    (lambda: DataSpec(image_size=0), "--image-size 0"),
    (lambda: DataSpec(split_seed=-1), "--split-seed -1"),
    (lambda: DataSpec(use_pretrain=False, allow_overlap=True), "--allow-test-overlap"),
    (lambda: OutputSpec(name="a/b"), "--name a/b"),
    (lambda: AblationSpec(seeds=(0, 0)), "--seeds 0,0"),
    (lambda: Arm(("no_pretrain", "freeze_backbone")), "--freeze-backbone with --no-pretrain"),
    (
        lambda: ablation_driver.run_ablation(
            SweepConfig(pretrain_epochs=0), AblationSpec(), DataSpec(), OutputSpec("x")
        ),
        "arm transfer pre-trains, but --pretrain-epochs is 0",
    ),
    (lambda: specs_from_run({"sweep": []}, OutputSpec("x")), "--resume: results/x/run.json is damaged (no 'sweep'"),
]


def test_the_patches_leave_nothing_behind():
    """In a fresh interpreter (nothing imported yet, as when this file runs before the others), the
    fixture's patches, once undone, leave no fake in any module: the smoke sweep's study.reproduce
    reached one in a run that took the test files in another order."""
    code = (
        "import sys, pytest\n"
        "sys.path.insert(0, 'tests')\n"
        "import test_user_errors as t\n"
        "with pytest.MonkeyPatch.context() as mp:\n"
        "    t.patch_expensive(mp)\n"
        "left = [f'{n}.{a}' for n, m in list(sys.modules.items()) if n.startswith(('pneumo_ray', 'study'))\n"
        "        for a, v in vars(m).items() if getattr(v, '__qualname__', '').startswith('_reached.')]\n"
        "print(left)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip() == "[]", p.stdout


@pytest.mark.parametrize("build, expected", LIBRARY, ids=[e for _, e in LIBRARY])
def test_the_configs_check_what_they_are_given(build, expected):
    with pytest.raises(UserError) as e:
        build()
    assert str(e.value).startswith(expected) and "\n" not in str(e.value)


def test_field_error_survives_pickling_as_ray_sends_it():
    e = FieldError("epochs", 0, "at least 1")
    again = pickle.loads(pickle.dumps(e))
    assert (str(again), again.field, again.flag) == (str(e), "epochs", "--epochs")
    assert str(e.with_flag("--split-seed")) == "--split-seed 0: at least 1"


# --- a metric that cannot be computed says why --------------------------------------------------


def test_an_undefined_metric_says_why():
    with pytest.warns(MetricUndefined, match="auc undefined"):
        assert np.isnan(roc_auc([1, 1, 1], [0.2, 0.4, 0.9]))
    with pytest.warns(MetricUndefined) as caught:
        m = binary_metrics([1, 1, 1], [0.2, 0.7, 0.9], 0.5)
    assert np.isnan(m["auc"]) and np.isnan(m["specificity"]) and np.isnan(m["balanced_accuracy"])
    assert m["sensitivity"] == pytest.approx(2 / 3)  # what can be computed still is
    assert m["undefined"] == (
        "auc: it needs both classes, and the 3 labels hold 3 PNEUMONIA and 0 NORMAL; "
        "specificity, balanced_accuracy: no NORMAL image to clear"
    )
    assert [str(w.message).split(" undefined")[0] for w in caught] == ["auc", "specificity, balanced_accuracy"]
    # nothing predicted positive: precision is 0/0; F1 = 2TP / (2TP + FP + FN) is still 0 here
    with pytest.warns(MetricUndefined, match="precision undefined"):
        m = binary_metrics([0, 1], [0.1, 0.2], 0.5)
    assert np.isnan(m["precision"]) and m["f1"] == 0.0 and m["undefined"].startswith("precision: no image scored")
    # NaN scores (a diverged model): no metric means anything, and the reason says so
    with pytest.warns(MetricUndefined, match="1 of 3 scores are NaN"):
        m = binary_metrics([0, 1, 1], [0.2, np.nan, 0.9], 0.5)
    assert all(np.isnan(m[k]) for k in ("auc", "accuracy", "sensitivity", "specificity", "precision", "f1"))


def test_defined_metrics_stay_quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = binary_metrics([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9], 0.5)
    assert m["undefined"] == "" and m["auc"] == 0.75
