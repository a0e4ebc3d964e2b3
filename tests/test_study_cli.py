"""The commands as a user runs them: subprocesses, real flags, files on disk."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def run(*args, cache_dir=None, timeout=900):
    env = dict(os.environ)
    if cache_dir:
        env["PNEUMO_RAY_CACHE"] = str(cache_dir)
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_train_real_cnn_64px_3_epochs_beats_chance_widely(kermany_root, cache_dir, tmp_path):
    """The issue's acceptance run: shallow CNN, 64 px, 3 epochs, from scratch, on the real 624 test images."""
    r = run(
        "study.train",
        "--data-root",
        str(kermany_root),
        "--model",
        "cnn",
        "--image-size",
        "64",
        "--epochs",
        "3",
        "--out",
        str(tmp_path / "run"),
        cache_dir=cache_dir,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "training from random initialisation" in r.stdout
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    print({k: m[k] for k in ("val_auc", "test_auc", "test_accuracy", "test_sensitivity", "test_specificity")})
    assert m["test_auc"] >= 0.90
    assert m["test_n"] == 624 and m["data"]["train_n"] + m["data"]["val_n"] == 5216
    preds = pd.read_parquet(tmp_path / "run" / "predictions.parquet")
    assert len(preds) == 624 and set(preds.columns) >= {"path", "label", "probability"}
    assert preds["path"].is_unique and int(preds.label.sum()) == 390


def test_train_synthetic_pretrain_finetune_writes_everything(tmp_path):
    out = tmp_path / "syn"
    r = run(
        "study.train",
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--pretrain-epochs",
        "1",
        "--out",
        str(out),
        cache_dir=tmp_path / "cache",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    for k in ("val_auc", "test_auc", "test_accuracy", "test_sensitivity", "test_specificity", "threshold"):
        assert np.isfinite(m[k]), k
    assert m["pretrained"] and m["pretrain_key"]
    assert m["test_auc"] < 0.99  # the phantoms are learnable but not trivial: not solved in one epoch
    hist = pd.read_parquet(out / "history.parquet")
    assert list(hist.phase) == ["pretrain", "finetune"]
    assert (out / "pretrain.safetensors").exists() and (out / "pretrain.json").exists()
    assert "pretrain epoch 1/1" in r.stdout and "finetune epoch 1/1" in r.stdout


def test_train_rejects_bad_flags():
    r = run("study.train", "--aug-strength", "3")
    assert r.returncode == 2 and r.stderr.startswith(
        "error: --aug-strength 3: the augmentation strength must be in [0, 1]"
    )


def test_inspect_real_folders(kermany_root, coronahack_root):
    r = run("study.data", "inspect", str(kermany_root), "--strict")
    assert r.returncode == 0, r.stderr
    assert "5216 images  NORMAL  1341  PNEUMONIA  3875" in r.stdout
    assert "624 images  NORMAL   234  PNEUMONIA   390" in r.stdout
    r = run("study.data", "inspect", str(coronahack_root))
    assert r.returncode == 0 and "3 problem(s)" in r.stdout and "E1724330-1866-4581-8CD8-CEC9B8AFEDDE.jpeg" in r.stdout
    assert run("study.data", "inspect", str(coronahack_root), "--strict").returncode == 1


def test_inspect_reports_each_bad_file(tmp_path):
    d = tmp_path / "chest_xray" / "train" / "NORMAL"
    d.mkdir(parents=True)
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(d / "IM-0001-0001.jpeg")
    (d / "IM-0002-0001.jpeg").write_bytes(b"")
    (d / "IM-0003-0001.jpeg").write_text("not a picture")
    for split, cls, name in (  # the other class and a test/ split: a folder without them is an error (exit 2)
        ("train", "PNEUMONIA", "person1_virus_1.jpeg"),
        ("test", "NORMAL", "IM-0009-0001.jpeg"),
        ("test", "PNEUMONIA", "person2_virus_2.jpeg"),
    ):
        (tmp_path / "chest_xray" / split / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "chest_xray" / split / cls / name)
    r = run(
        "study.data",
        "inspect",
        str(tmp_path / "chest_xray"),
        "--decode",
        "16",
        "--strict",
        cache_dir=tmp_path / "cache",
    )
    assert r.returncode == 1
    assert "IM-0002-0001.jpeg: empty file (0 bytes)" in r.stdout
    assert "IM-0003-0001.jpeg: cannot decode image" in r.stdout
    assert "decoded 4 of 6 images" in r.stdout
    assert run("study.data", "inspect", str(tmp_path / "nowhere")).returncode == 2


def test_download_without_token_says_what_to_do(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE")}
    env["HOME"] = str(tmp_path)  # no ~/.kaggle/kaggle.json here; nothing touches the network
    r = subprocess.run(
        [sys.executable, "-m", "study.data", "download", "--dest", str(tmp_path / "d")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert "no Kaggle API token" in r.stderr and "kaggle.json" in r.stderr and "--data-root" in r.stderr
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    "command, expected",
    [
        ("study.train", "--data-root"),
        ("study.data", "download"),
        ("study.sweep", "presets"),
        ("study.ablate", "--no-pretrain"),
        ("study.audit", "--pretrain-root"),
        ("study.reproduce", "--tolerance"),
    ],
)
def test_every_command_has_help(command, expected):
    r = subprocess.run([sys.executable, "-m", command, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and expected in r.stdout and f"python -m {command}" in r.stdout, r.stderr[-2000:]


@pytest.mark.parametrize("command", ["study.train", "study.sweep", "study.ablate"])
@pytest.mark.parametrize("flag", ["--data-root", "--pretrain-root"])
def test_missing_data_folder_is_one_line_before_any_work(command, flag, tmp_path):
    r = (
        run(command, flag, str(tmp_path / "nope"), "--name", "x")
        if command != "study.train"
        else run(command, flag, str(tmp_path / "nope"))
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        f"error: {flag} {tmp_path / 'nope'}: no such folder; give "
        + (
            "the Kaggle chest_xray/ folder (with train/ and test/)"
            if flag == "--data-root"
            else "the Kaggle CoronaHack folder (with Chest_xray_Corona_Metadata.csv)"
        )
        + ", or leave it out for the synthetic data"
    ]
    assert not (tmp_path / "results").exists()
