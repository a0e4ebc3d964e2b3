"""A user's mistake about a data folder is one line naming the path, before anything is decoded:
`python -m study.data inspect` exits 2 with `error: ...` on stderr (no traceback), and the library's
`scan` / `load_study_data` raise UserError with that line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumo_ray.config.data import DataSpec
from pneumo_ray.config.errors import UserError
from pneumo_ray.data import cache, sources
from pneumo_ray.data.study_data import load_study_data

ROOT = Path(__file__).resolve().parents[1]
CSV_HEADER = ",X_ray_image_name,Label,Dataset_type,Label_2_Virus_category,Label_1_Virus_category\n"


def _image(path: Path, value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 255, (24, 24), dtype=np.uint8)).save(path, format="JPEG")


def kermany(root: Path, layout: dict[str, tuple[str, ...]] | None = None) -> Path:
    """A small chest_xray/ folder: four images (four patients) per <split>/<CLASS>/ of `layout`."""
    layout = layout if layout is not None else {"train": ("NORMAL", "PNEUMONIA"), "test": ("NORMAL", "PNEUMONIA")}
    for s, (split, classes) in enumerate(layout.items()):
        for c, cls in enumerate(classes):
            for i in range(4):
                name = f"IM-{s}{i:03d}-0001.jpeg" if cls == "NORMAL" else f"person{s}{i}_virus_{i}.jpeg"
                _image(root / split / cls / name, 100 * s + 10 * c + i)
    return root


def coronahack(root: Path, rows: list[tuple[str, str, str]], images: list[tuple[str, str]], header: str = CSV_HEADER):
    """A CoronaHack folder: the CSV (rows of name, Label, Dataset_type) and the image files (split, name)."""
    base = root / "Coronahack-Chest-XRay-Dataset" / "Coronahack-Chest-XRay-Dataset"
    for split in ("train", "test"):
        (base / split).mkdir(parents=True, exist_ok=True)
    for i, (split, name) in enumerate(images):
        _image(base / split / name, i)
    body = "".join(f"{i},{name},{label},{split},,\n" for i, (name, label, split) in enumerate(rows))
    (root / sources.CORONAHACK_CSV).write_text(header + body)
    return root


def _good_coronahack(root: Path) -> Path:
    rows = [("a.jpeg", "Normal", "TRAIN"), ("b.jpeg", "Pnemonia", "TRAIN"), ("c.jpeg", "Normal", "TEST")]
    return coronahack(root, rows, [("train", "a.jpeg"), ("train", "b.jpeg"), ("test", "c.jpeg")])


def inspect(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "study.data", "inspect", str(path)],
        cwd=ROOT,
        env=dict(os.environ, PNEUMO_RAY_DEBUG="0"),
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_one_line_error(r: subprocess.CompletedProcess, path: Path, *words: str) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr and str(path) in lines[0], lines[0]
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


# Each case: a folder builder → (the path the message names, words it must hold).
CASES = {
    "absent": lambda t: (t / "nowhere", t / "nowhere", ["no such folder"]),
    "empty": lambda t: (_mkdir(t / "empty"), t / "empty", ["empty folder"]),
    "one class": lambda t: (
        kermany(t / "k", {"train": ("NORMAL",), "test": ("NORMAL",)}),
        t / "k" / "train",
        ["only NORMAL images", "PNEUMONIA"],
    ),
    "test one class": lambda t: (
        kermany(t / "k", {"train": ("NORMAL", "PNEUMONIA"), "test": ("PNEUMONIA",)}),
        t / "k" / "test",
        ["only PNEUMONIA images"],
    ),
    "no test": lambda t: (kermany(t / "k", {"train": ("NORMAL", "PNEUMONIA")}), t / "k", ["no test/ folder"]),
    "no train": lambda t: (kermany(t / "k", {"test": ("NORMAL", "PNEUMONIA")}), t / "k", ["no train/ folder"]),
    "neither layout": lambda t: (_stuff(t / "x"), t / "x", ["not a Kaggle chest_xray/ folder", "photos/"]),
    "csv columns": lambda t: (
        coronahack(t / "c", [("a.jpeg", "Normal", "TRAIN")], [("train", "a.jpeg")], header="name,Label,Dataset_type\n"),
        t / "c" / sources.CORONAHACK_CSV,
        ["missing column(s)", "X_ray_image_name"],
    ),
    "csv labels": lambda t: (
        coronahack(
            t / "c", [(f"{i}.jpeg", "COVID", "TRAIN") for i in range(3)], [("train", f"{i}.jpeg") for i in range(3)]
        ),
        t / "c" / sources.CORONAHACK_CSV,
        ["Label is unknown in 3 of 3 rows", "'COVID'"],
    ),
    "csv images absent": lambda t: (
        coronahack(t / "c", [("a.jpeg", "Normal", "TRAIN"), ("b.jpeg", "Pnemonia", "TRAIN")], []),
        t / "c" / sources.CORONAHACK_CSV,
        ["none of its 2 listed images"],
    ),
    "csv one class": lambda t: (
        coronahack(t / "c", [("a.jpeg", "Normal", "TRAIN"), ("b.jpeg", "Normal", "TEST")], [("train", "a.jpeg")]),
        t / "c" / sources.CORONAHACK_CSV,
        ["no usable TRAIN images labelled Pnemonia"],
    ),
}


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True)
    (p / ".DS_Store").write_bytes(b"\0")  # clutter alone is still empty
    return p


def _stuff(p: Path) -> Path:
    _image(p / "photos" / "cat.jpeg")
    (p / "notes.txt").parent.mkdir(parents=True, exist_ok=True)
    (p / "notes.txt").write_text("hello")
    return p


@pytest.mark.parametrize("case", sorted(CASES))
def test_inspect_exits_2_with_one_line(tmp_path, case):
    folder, named, words = CASES[case](tmp_path)
    assert_one_line_error(inspect(folder), named, *words)


@pytest.mark.parametrize("case", sorted(CASES))
def test_scan_raises_the_same_line(tmp_path, case):
    folder, named, words = CASES[case](tmp_path)
    with pytest.raises(UserError) as e:
        sources.scan(folder)
    assert str(named) in str(e.value) and all(w in str(e.value) for w in words)
    assert "\n" not in str(e.value)


@pytest.fixture
def no_decoding(monkeypatch):
    monkeypatch.setattr(cache, "decoded", lambda *a, **k: pytest.fail("decoded before the folders were checked"))


@pytest.mark.parametrize("case", ["empty", "one class", "test one class", "no test", "no train", "neither layout"])
def test_load_study_data_names_data_root_before_decoding(tmp_path, no_decoding, case):
    folder, named, words = CASES[case](tmp_path)
    with pytest.raises(UserError) as e:
        load_study_data(DataSpec(folder, None, image_size=16, cache_dir=tmp_path / "cache"), quiet=True, log=None)
    msg = str(e.value)
    assert msg.startswith("--data-root: ") and str(named) in msg and all(w in msg for w in words), msg


@pytest.mark.parametrize("case", ["csv columns", "csv labels", "csv images absent", "csv one class", "empty"])
def test_load_study_data_checks_the_pretrain_root_before_decoding_the_target(tmp_path, no_decoding, case):
    """Both roots are checked first: a bad CSV used to fail only after the whole target was decoded."""
    target = kermany(tmp_path / "k")
    folder, named, words = CASES[case](tmp_path)
    with pytest.raises(UserError) as e:
        load_study_data(DataSpec(target, folder, image_size=16, cache_dir=tmp_path / "cache"), quiet=True, log=None)
    msg = str(e.value)
    assert msg.startswith("--pretrain-root: ") and str(named) in msg and all(w in msg for w in words), msg


def test_coronahack_given_as_the_target_says_so(tmp_path, no_decoding):
    folder = _good_coronahack(tmp_path / "c")
    with pytest.raises(UserError, match="a CoronaHack folder .*give it as the pre-training root"):
        load_study_data(DataSpec(folder, None, image_size=16, cache_dir=tmp_path / "cache"), quiet=True, log=None)


def test_a_few_missing_images_are_one_grouped_warning(tmp_path):
    rows = [(f"{c}{i}.jpeg", label, "TRAIN") for c, label in (("n", "Normal"), ("p", "Pnemonia")) for i in range(4)]
    present = [("train", name) for name, _, _ in rows[:2] + rows[4:6]]
    folder = coronahack(tmp_path / "c", rows, present)
    r = inspect(folder)
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if "listed in" in line]
    assert len(lines) == 1 and "4 image files listed in Chest_xray_Corona_Metadata.csv but missing" in lines[0]
    assert "n2.jpeg, n3.jpeg, p2.jpeg, ... and 1 more" in lines[0]
    d = load_study_data(
        DataSpec(kermany(tmp_path / "k"), folder, image_size=16, cache_dir=tmp_path / "cache"), log=None
    )
    assert d.info["problem_count"] == 4 and len(d.info["problems"]) == 1 and "4 image files" in d.info["problems"][0]


def test_a_class_that_decodes_nowhere_is_named_after_decoding(tmp_path):
    root = kermany(tmp_path / "k")
    for p in (root / "test" / "PNEUMONIA").iterdir():
        p.write_bytes(b"")
    with pytest.raises(UserError, match=r"no PNEUMONIA image of test could be decoded; first problem: .*empty file"):
        load_study_data(DataSpec(root, None, image_size=16, cache_dir=tmp_path / "cache"), quiet=True, log=None)


def test_the_message_names_the_flag_in_the_library_spec(tmp_path):
    """The commands build DataSpec from --data-root / --pretrain-root: their run_main prints this line."""
    with pytest.raises(UserError) as e:
        load_study_data(DataSpec(_mkdir(tmp_path / "e"), None, image_size=16), quiet=True, log=None)
    assert str(e.value) == f"--data-root: {tmp_path / 'e'}: empty folder; give the Kaggle chest_xray/ folder " + (
        f"({sources.KERMANY_LAYOUT})"
    )
