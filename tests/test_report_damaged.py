"""study.report on damaged and mistaken inputs: a damaged file (truncated, random bytes, empty, not the
table or run.json the study writes) is one `warning:` line naming it, the parts that need it are left
out with a note on the page and the rest is written (exit 0); nothing usable, a path that is no
results folder, an output that cannot be written or a bad flag is one `error:` line (exit 2). Results
folders are built from scratch (tests/test_report.py's fixtures), then damaged; no Ray."""

from __future__ import annotations

import html as html_lib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_report import make_ablation, make_sweep

from pneumo_ray.config.errors import UserError
from pneumo_ray.report import figures as figs
from pneumo_ray.report.build import build_report
from pneumo_ray.report.inputs import load_report_data
from study.common import run_main
from study.report import main

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = (
    "Summary",
    "1. Model comparison on the test set",
    "2. Learning curves",
    "3. Sweep insight",
    "4. Ablations",
    "5. Test images and where the model looks",
)
COMPARISON = {"roc", "precision_recall", "confusion", "calibration"}
SWEEP = {"learning_curves", "optimisation_history", "importance", "params"}
ABLATION = {"forest", "arm_metrics"}
EVERYTHING = COMPARISON | SWEEP | ABLATION


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A sweep (3 trials per model, one failed) and an ablation (2 arms × 2 seeds), written once."""
    root = tmp_path_factory.mktemp("pristine")
    make_sweep(root, root / "cache", n_trials=3, checkpoint=False)
    make_ablation(root)
    return root


@pytest.fixture
def results(pristine, tmp_path) -> Path:
    """A fresh copy of the pristine folders, to damage."""
    shutil.copytree(pristine, tmp_path / "results")
    return tmp_path / "results"


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def garbage(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, path.stat().st_size, dtype=np.uint8).tobytes())


def empty(path: Path) -> None:
    path.write_bytes(b"")


def report(results: Path, *extra: str, capsys) -> tuple[int, str, str]:
    """`python -m study.report <sweep> <ablation> --out <results>/out` as run_main runs it: (status, out, err)."""
    argv = [str(results / "sweep"), str(results / "ablation"), "--out", str(results / "out"), "--n-boot", "100"]
    status = run_main(main, [*argv, *extra])
    out, err = capsys.readouterr()
    return status, out, err


def page(results: Path) -> str:
    return html_lib.unescape((results / "out" / "report.html").read_text())


def drawn(results: Path) -> set[str]:
    return {p.stem for p in (results / "out" / "figures").glob("*.png")}


def assert_one_warning(err: str, path: Path) -> str:
    lines = err.splitlines()
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith(f"warning: {path} is damaged ("), err
    return lines[0]


# --- a damaged table: warned, its parts left out, the rest written -------------------------------

DAMAGES = {"truncated": truncate, "random-bytes": garbage, "empty": empty}
TABLES = (
    "sweep/trials.parquet",
    "sweep/epochs.parquet",
    "sweep/predictions.parquet",
    "ablation/ablations.parquet",
    "ablation/ablation_predictions.parquet",
    "ablation/ablation_summary.parquet",
    "ablation/audit_summary.parquet",
)
REASONS = {
    "truncated": "(not a readable Parquet table: ",
    "random-bytes": "(not a readable ",
    "empty": "(an empty file",
}


@pytest.mark.parametrize("damage", list(DAMAGES))
@pytest.mark.parametrize("table", TABLES)
def test_each_damaged_table_is_recorded_and_read_as_absent(results, table, damage):
    """Every table × every damage, read as the report reads them (fast: no figures)."""
    path = results / table
    DAMAGES[damage](path)
    data = load_report_data([results / "sweep", results / "ablation"])
    assert [(d.path, d.table) for d in data.damaged] == [(path, path.stem)]
    assert REASONS[damage] in str(data.damaged[0]) and "restore it from a copy" in str(data.damaged[0])
    frames = {**{t: getattr(data.sweep, t) for t in ("trials", "epochs", "predictions")}, **data.ablation}
    assert frames[path.stem].empty
    assert all(len(f) for t, f in frames.items() if t != path.stem)  # the others are read


# table, damage -> the figures left out (each damage is tried on every table above; here the whole
# command runs once per table). The ablation's figures are recomputed or drawn without the seeds' dots.
LEFT_OUT = {
    ("sweep/trials.parquet", "truncated"): SWEEP,  # the comparison falls back to the ablation's arms
    ("sweep/epochs.parquet", "empty"): {"learning_curves"},
    ("sweep/predictions.parquet", "random-bytes"): COMPARISON,
    ("ablation/ablations.parquet", "truncated"): set(),
    ("ablation/ablation_predictions.parquet", "empty"): set(),
    ("ablation/ablation_summary.parquet", "random-bytes"): set(),  # recomputed from the two above
    ("ablation/audit_summary.parquet", "truncated"): set(),
}


@pytest.mark.parametrize("table, damage", list(LEFT_OUT), ids=[f"{t}-{d}" for t, d in LEFT_OUT])
def test_a_damaged_table_is_named_left_out_and_the_rest_is_written(results, table, damage, capsys):
    path = results / table
    DAMAGES[damage](path)
    status, out, err = report(results, "--no-images", capsys=capsys)
    assert status == 0
    line = assert_one_warning(err, path)
    assert REASONS[damage] in line and "restore it from a copy" in line and "Not shown without it: " in line
    text = page(results)
    assert text.count(f"left out: {path} is damaged (") >= 2  # at the top and in the section that needs it
    assert all(f">{title}</h2>" in text for title in SECTIONS)
    assert drawn(results) == EVERYTHING - LEFT_OUT[table, damage]
    assert "1 part(s) left out" in out
    if path.stem == "ablation_summary":  # recomputed, and said so
        assert "ablation_summary.parquet damaged: recomputed from ablations.parquet" in text
        assert "no-pretrain vs transfer (cnn): " in text  # the verdict is still there
    summary = json.loads((results / "out" / "summary.json").read_text())
    assert len(summary["warnings"]) == 1 and str(path) in summary["warnings"][0]


def test_the_damage_reason_is_short_and_says_what_to_do(results, capsys):
    truncate(results / "sweep" / "predictions.parquet")
    empty(results / "ablation" / "audit_summary.parquet")
    status, _, err = report(results, "--no-images", capsys=capsys)
    assert status == 0
    lines = err.splitlines()
    assert len(lines) == 2 and all(line.startswith("warning: ") for line in lines)
    assert lines[0] == (
        f"warning: {results}/sweep/predictions.parquet is damaged (not a readable Parquet table: Parquet magic "
        f"bytes not found in footer); move it away and rerun `python -m study.sweep --results {results} --name "
        "sweep --resume` to collect it again from Ray's storage, or restore it from a copy. Not shown without it: "
        "the sweep's models on test (metrics, ROC, precision-recall, confusion, calibration) and the test images"
    )
    assert lines[1].startswith(f"warning: {results}/ablation/audit_summary.parquet is damaged (an empty file, 0 bytes)")
    assert "Leakage audit" not in page(results) and "forest" in drawn(results)


def test_a_table_without_the_columns_the_report_reads_is_damaged(results, capsys):
    path = results / "sweep" / "epochs.parquet"
    pd.DataFrame({"something": [1, 2]}).to_parquet(path)  # a valid Parquet file, but not the epochs table
    status, _, err = report(results, "--no-images", capsys=capsys)
    assert status == 0
    assert "(no column trial_id, epoch: not the table the study writes)" in assert_one_warning(err, path)
    assert drawn(results) == EVERYTHING - {"learning_curves"}


# --- run.json ------------------------------------------------------------------------------------


RUN_JSON = {
    "truncated": (None, "(not valid JSON: "),
    "not-text": (b"\xff\xfe\x00garbage", "(not text: "),
    "not-json": (b"not json at all", "(not valid JSON: "),
    "array": (b"[1, 2, 3]", "(an array, not a JSON object)"),
    "missing-keys": (b'{"preset": "smoke", "status": "finished"}', "(no data_root under args or settings)"),
    "wrong-types": (b'{"sweep": "oops", "args": [1, 2]}', "(sweep, args are not a JSON object)"),
}


def damage_run_json(path: Path, how: str) -> None:
    content = RUN_JSON[how][0]
    truncate(path) if content is None else path.write_bytes(content)


@pytest.mark.parametrize("how", list(RUN_JSON))
def test_each_damaged_run_json_is_recorded(results, how):
    path = results / "sweep" / "run.json"
    damage_run_json(path, how)
    data = load_report_data([results / "sweep", results / "ablation"])
    assert [(d.path, d.table) for d in data.damaged] == [(path, "run")]
    assert RUN_JSON[how][1] in str(data.damaged[0])
    assert data.has_sweep and data.has_ablation


@pytest.mark.parametrize("how", ["truncated", "missing-keys"])
def test_a_damaged_run_json_leaves_out_the_test_images_only(results, how, capsys):
    path = results / "sweep" / "run.json"
    damage_run_json(path, how)
    status, _, err = report(results, "--gradcam", "0", "--examples", "1", capsys=capsys)
    assert status == 0
    assert RUN_JSON[how][1] in assert_one_warning(err, path)
    pictures = page(results).split(">5. Test images and where the model looks</h2>")[1]
    assert f"left out: {path} is damaged" in pictures  # the best model is the sweep's cnn: its data are unknown
    assert drawn(results) == EVERYTHING  # every other figure is drawn


def test_a_damaged_ablation_run_json_does_not_touch_the_sweeps_pictures(results, capsys):
    path = results / "ablation" / "run.json"
    truncate(path)
    status, _, err = report(results, "--gradcam", "0", "--examples", "1", capsys=capsys)
    assert status == 0
    assert_one_warning(err, path)
    assert drawn(results) == EVERYTHING | {"test_examples"}


# --- values a part cannot use: that part is left out; a bug is not hidden --------------------------


def test_predictions_that_are_not_probabilities_leave_that_model_out(results):
    path = results / "sweep" / "predictions.parquet"
    preds = pd.read_parquet(path)
    preds.loc[preds.trial_id == "cnn00002", "probability"] = np.nan  # cnn's best trial (by validation AUC)
    preds.to_parquet(path)
    warned = []
    rep = build_report(
        [results / "sweep"], results / "out", n_boot=100, images=False, formats=("png",), log=None, warn=warned.append
    )
    assert len(warned) == 1 and warned[0].startswith("cnn (best trial cnn00002): its rows in ")
    assert f"{path} hold 120 probability value(s) that are not numbers from 0 to 1" in warned[0]
    assert [c.label for c in rep.candidates] == ["densenet"]
    assert COMPARISON | SWEEP <= set(rep.figures)


def test_a_figure_its_data_cannot_draw_is_left_out_with_a_warning(results):
    path = results / "ablation" / "ablation_summary.parquet"
    pd.read_parquet(path).drop(columns=["auc_diff_ci_low"]).to_parquet(path)  # as an older or edited summary
    warned = []
    rep = build_report(
        [results / "ablation"],
        results / "out",
        n_boot=100,
        images=False,
        formats=("png",),
        log=None,
        warn=warned.append,
    )
    assert len(warned) == 1
    assert warned[0].startswith(f"the forest figure: cannot be made from {path} (KeyError: 'auc_diff_ci_low')")
    assert "forest" not in rep.figures and {"arm_metrics", "roc"} <= set(rep.figures)
    assert f"left out: {warned[0]}" in rep.html.read_text().replace("&#x27;", "'")


def test_a_bug_in_a_figure_keeps_its_traceback(results, monkeypatch):
    def broken(*args, **kwargs):
        raise AttributeError("a bug, not the data")

    monkeypatch.setattr(figs, "history_figure", broken)
    with pytest.raises(AttributeError, match="a bug, not the data"):
        build_report([results / "sweep"], results / "out", n_boot=100, images=False, formats=("png",), log=None)


def test_strict_raises_what_a_damaged_part_would_leave_out(results):
    path = results / "ablation" / "ablation_summary.parquet"
    pd.read_parquet(path).drop(columns=["auc_diff_ci_low"]).to_parquet(path)
    with pytest.raises(KeyError):
        build_report([results / "ablation"], results / "out", images=False, formats=("png",), log=None, strict=True)


# --- nothing usable, and the other mistakes: one error line, exit 2 --------------------------------


def assert_one_error(status: int, err: str, *fragments: str) -> None:
    assert status == 2
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for f in fragments:
        assert f in lines[0]


def test_nothing_usable_left_is_one_error_and_writes_nothing(results, capsys):
    truncate(results / "sweep" / "trials.parquet")
    status = run_main(main, [str(results / "sweep"), "--no-images"])
    assert_one_error(
        status,
        capsys.readouterr().err,
        "error: nothing to report: ",
        f"{results}/sweep/trials.parquet is damaged (not a readable Parquet table",
        "restore it from a copy",
    )
    assert not (results / "sweep" / "report").exists()


def test_an_ablation_with_every_table_damaged_is_one_error(results, capsys):
    for t in ("ablations", "ablation_predictions", "ablation_summary"):
        garbage(results / "ablation" / f"{t}.parquet")
    status = run_main(main, [str(results / "ablation")])
    err = capsys.readouterr().err
    assert_one_error(status, err, "nothing to report: ", "ablations.parquet is damaged", "ablation_summary.parquet")


def test_a_sweep_whose_trials_all_failed_is_one_error(results, capsys):
    trials = pd.read_parquet(results / "sweep" / "trials.parquet")
    trials.assign(best_val_auc=np.nan).to_parquet(results / "sweep" / "trials.parquet")
    status = run_main(main, [str(results / "sweep")])
    assert_one_error(status, capsys.readouterr().err, "none of the 7 trial(s) in trials.parquet has a validation AUC")


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["{r}/nope"], ["{r}/nope: no such results folder"]),
        (["{r}/sweep/trials.parquet"], ["a file, not a results folder", "the folder that holds it ({r}/sweep)"]),
        (["{r}/cache"], ["{r}/cache: not a results folder (no run.json, trials.parquet"]),
        (["{r}/sweep", "{r}/nope"], ["{r}/nope: no such results folder"]),  # one typo stops the combined report
        (["{r}/sweep", "--out", "{r}/sweep/run.json"], ["--out {r}/sweep/run.json: is a file, not a folder"]),
        (["{r}/sweep", "--out", "{r}/sweep/run.json/report"], ["lies under {r}/sweep/run.json, a file"]),
        (["{r}/sweep", "--top", "0"], ["--top 0: must be at least 1"]),
        (["{r}/sweep", "--n-boot", "10"], ["--n-boot 10: must be at least 100"]),
        (["{r}/sweep", "--examples", "0"], ["--examples 0: must be at least 1", "--no-images"]),
        (["{r}/sweep", "--gradcam", "-1"], ["--gradcam -1: must be at least 0"]),
        (["{r}/sweep", "--seed", "-3"], ["--seed -3: must be at least 0"]),
        (["{r}/sweep", "--top", "many"], ["argument --top: invalid int value: 'many'", "--help"]),
        (["{r}/sweep", "--colour"], ["unrecognized arguments: --colour"]),
        ([], ["the following arguments are required: folders"]),
    ],
    ids=[
        "no-such-folder",
        "a-file",
        "not-results",
        "one-of-two-missing",
        "out-is-a-file",
        "out-under-a-file",
        "top",
        "n-boot",
        "examples",
        "gradcam",
        "seed",
        "not-a-number",
        "unknown-flag",
        "no-folder",
    ],
)
def test_a_users_mistake_is_one_line_and_exit_2(results, args, fragments, capsys):
    (results / "cache").mkdir(exist_ok=True)
    status = run_main(main, [a.format(r=results) for a in args])
    assert_one_error(status, capsys.readouterr().err, *(f.format(r=results) for f in fragments))
    assert not (results / "sweep" / "report").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_an_out_that_cannot_be_written_is_one_error(results, capsys):
    locked = results / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        status = run_main(main, [str(results / "sweep"), "--out", str(locked / "report")])
    finally:
        locked.chmod(0o700)
    assert_one_error(status, capsys.readouterr().err, f"--out {locked}/report: cannot write in {locked}")


def test_a_results_folder_that_cannot_hold_its_report_is_one_error(results, capsys):
    (results / "sweep" / "report").write_text("a file where the report folder goes")
    status = run_main(main, [str(results / "sweep"), "--no-images"])
    assert_one_error(status, capsys.readouterr().err, f"{results}/sweep/report: cannot write the report there (a file")


def test_the_command_itself_warns_and_errs_in_one_line(results):
    """The real entry point (`python -m study.report`): a warning and exit 0, then an error and exit 2."""
    garbage(results / "sweep" / "epochs.parquet")

    def cli(*args):
        cmd = [sys.executable, "-m", "study.report", *map(str, args), "--no-images", "--n-boot", "100"]
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)

    done = cli(results / "sweep", "--out", results / "out")
    assert done.returncode == 0, done.stderr
    assert_one_warning(done.stderr, results / "sweep" / "epochs.parquet")
    assert "left out: " in page(results)
    done = cli(results / "missing")
    assert_one_error(done.returncode, done.stderr, f"{results}/missing: no such results folder")


def test_build_report_raises_user_error_for_a_library_caller(results):
    with pytest.raises(UserError, match="no such results folder"):
        build_report([results / "missing"], log=None)
