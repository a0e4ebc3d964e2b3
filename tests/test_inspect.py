"""`python -m study.data inspect` names unreadable files without decoding them (empty, wrong first bytes,
truncated), and every report groups problems one line per kind, so one real cause is never buried
under thousands of lines."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumo_ray.data import checks
from pneumo_ray.data.sources import Problem

ROOT = Path(__file__).resolve().parents[1]


def _save(path: Path, fmt: str, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 255, (32, 32), dtype=np.uint8)
    Image.fromarray(arr).save(path, format=fmt)
    return path


def _bytes(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize(
    "name,content,reason,kind",
    [
        ("empty.jpeg", b"", "empty file (0 bytes)", "empty files (0 bytes)"),
        ("html.jpeg", b"<html><body>403 Forbidden</body></html>", "not an image: first bytes 3C 68", checks.NO_FORMAT),
        ("lfs.png", b"version https://git-lfs.github.com/spec/v1\n", "not an image", checks.NO_FORMAT),
        ("cut.jpeg", _bytes("JPEG")[:300], "no JPEG end marker (FFD9)", "truncated JPEG files (no end marker FFD9)"),
        ("cut.png", _bytes("PNG")[:300], "no PNG end chunk (IEND)", "truncated PNG files (no IEND chunk)"),
        ("cut.bmp", _bytes("BMP")[:500], "its BMP header says", "truncated BMP files (shorter than their header says)"),
    ],
)
def test_cheap_checks_name_unreadable_files(tmp_path, name, content, reason, kind):
    p = tmp_path / name
    p.write_bytes(content)
    problem, note = checks.check_image_file(p)
    assert problem is not None and reason in problem.reason and problem.kind == kind and note is None
    if content:  # and the decoder agrees that it cannot be used
        with pytest.raises((OSError, ValueError, SyntaxError)):
            with Image.open(p) as im:
                im.load()


def test_png_without_its_end_is_reported_although_pillow_may_load_it(tmp_path):
    """Cut inside its last chunks, a PNG can still load (the last rows lost or not): the cheap check
    reports it all the same, since the file is not what was written."""
    p = tmp_path / "end.png"
    p.write_bytes(_bytes("PNG")[:-20])
    problem, _ = checks.check_image_file(p)
    assert problem is not None and problem.kind == "truncated PNG files (no IEND chunk)"


@pytest.mark.parametrize(
    "fmt,ext", [("JPEG", "jpeg"), ("JPEG", "jpg"), ("PNG", "png"), ("BMP", "bmp"), ("TIFF", "tif")]
)
def test_cheap_checks_pass_good_files(tmp_path, fmt, ext):
    assert checks.check_image_file(_save(tmp_path / f"ok.{ext}", fmt)) == (None, None)


def test_other_format_under_an_extension_is_a_note_not_a_problem(tmp_path):
    p = tmp_path / "x.png"
    p.write_bytes(_bytes("JPEG"))  # as CoronaHack's 8 *.png files
    problem, note = checks.check_image_file(p)
    assert problem is None and note is not None and "JPEG data under a .png name" in note.reason


def test_grouped_one_line_per_kind_with_count_and_first_names(tmp_path):
    folder = tmp_path / "train" / "NORMAL"
    problems = [Problem(str(folder / f"{c}.jpeg"), "empty file (0 bytes)", "empty files (0 bytes)") for c in "abcde"]
    problems += [Problem(str(tmp_path / "test" / "x.jpeg"), "not an image: first bytes 3C", checks.NO_FORMAT)]
    problems += [Problem(str(folder / "f.jpeg"), "empty file (0 bytes)", "empty files (0 bytes)")]
    lines = checks.grouped(problems)
    assert lines == [
        f"6 empty files (0 bytes) under {folder}: a.jpeg, b.jpeg, c.jpeg, ... and 3 more",
        f"{tmp_path / 'test' / 'x.jpeg'}: not an image: first bytes 3C",  # met once: its full line
    ]
    assert checks.grouped(problems[:2], first=5) == [f"2 empty files (0 bytes) under {folder}: a.jpeg, b.jpeg"]
    # across folders: names relative to the folder they share
    mixed = [Problem(str(tmp_path / s / "a.jpeg"), "r", "k") for s in ("train", "test")]
    assert checks.grouped(mixed) == [f"2 k under {tmp_path}: train/a.jpeg, test/a.jpeg"]
    assert checks.grouped([]) == []


def _inspect(*args: str, cache_dir: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, **({"PNEUMO_RAY_CACHE": str(cache_dir)} if cache_dir else {}))
    return subprocess.run(
        [sys.executable, "-m", "study.data", "inspect", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )


@pytest.fixture
def damaged_folder(tmp_path) -> Path:
    """A Kermany folder with 40 empty files, 3 HTML pages saved as .jpeg, 2 cut-short JPEGs, 8 good images."""
    root = tmp_path / "chest_xray"
    for split in ("train", "test"):
        for cls, stem in (("NORMAL", "IM-{:04d}-0001"), ("PNEUMONIA", "person{}_virus_1")):
            for i in range(2):
                _save(root / split / cls / (stem.format(100 * len(split) + i) + ".jpeg"), "JPEG", i)
    for i in range(40):
        (root / "train" / "NORMAL" / f"IM-{i + 2000:04d}-0001.jpeg").write_bytes(b"")
    for i in range(3):
        (root / "train" / "PNEUMONIA" / f"person{i + 900}_bacteria_1.jpeg").write_text("<html>Forbidden</html>")
    for i in range(2):
        (root / "test" / "NORMAL" / f"IM-{i + 3000:04d}-0001.jpeg").write_bytes(_bytes("JPEG")[:400])
    return root


def test_inspect_groups_cheap_problems_and_strict_exits_1(damaged_folder):
    r = _inspect(str(damaged_folder))
    assert r.returncode == 0, r.stderr  # usable: 8 good images of both classes in train and test
    out = r.stdout
    assert "45 problem(s):" in out
    normal = damaged_folder / "train" / "NORMAL"
    assert f"  40 empty files (0 bytes) under {normal}: IM-2000-0001.jpeg, IM-2001-0001.jpeg, IM-2002-0001.jpeg" in out
    assert "... and 37 more" in out
    assert f"  3 {checks.NO_FORMAT} under {damaged_folder / 'train' / 'PNEUMONIA'}: person900_bacteria_1.jpeg" in out
    assert "  2 truncated JPEG files (no end marker FFD9) under" in out
    assert len(out.splitlines()) < 20  # 45 problems, 3 kinds: 3 lines, not 45
    assert _inspect(str(damaged_folder), "--strict").returncode == 1
    listed = _inspect(str(damaged_folder), "--list").stdout
    assert sum("IM-20" in line and "empty file (0 bytes)" in line for line in listed.splitlines()) == 40


def test_inspect_decode_keeps_the_decoders_reason_once_per_file(damaged_folder, tmp_path):
    r = _inspect(str(damaged_folder), "--decode", "16", "--strict", "--cache-dir", str(tmp_path / "cache"))
    assert r.returncode == 1
    assert "45 problem(s):" in r.stdout and "decoded 8 of 53 images" in r.stdout
    assert "3 files that cannot be decoded (UnidentifiedImageError)" in r.stdout


def test_inspect_help_documents_strict():
    r = _inspect("--help")
    assert r.returncode == 0 and "--strict" in r.stdout and "exit 1" in r.stdout and "exit 2" in r.stdout


def test_inspect_real_coronahack_notes_and_groups(coronahack_root):
    r = _inspect(str(coronahack_root))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "note: 8 files holding JPEG data under a .png name (decoded by content)" in out
    assert "3 problem(s):" in out
    assert "3 image files listed in Chest_xray_Corona_Metadata.csv but missing under" in out
    assert "E1724330-1866-4581-8CD8-CEC9B8AFEDDE.jpeg" in out
