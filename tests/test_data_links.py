"""Data folders reached through symbolic links (another disk, shared storage, a data set manager's
cache): the real data linked from a temporary folder — split folders, class folders, single image
files, CoronaHack's CSV and its nested image folders — reads exactly as the real folder does, through
the commands a user types; the decoded cache is the same entry either way; a link loop is one
`error:` line. Links are only ever created inside tmp_path (never in ../shared/data)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pneumo_ray.data import cache, sources
from pneumo_ray.data.walk import walk

ROOT = Path(__file__).resolve().parents[1]


def run(*args, cache_dir=None, timeout=600):
    env = dict(os.environ)
    if cache_dir:
        env["PNEUMO_RAY_CACHE"] = str(cache_dir)
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def _one_error_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2, (r.stdout[-2000:], r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


@pytest.fixture
def linked_kermany(kermany_root, tmp_path) -> Path:
    """train/ a link to the real train folder; test/ a real folder whose NORMAL/ is a link to the real
    class folder and whose PNEUMONIA/ holds one link per real image file."""
    real = kermany_root.resolve()
    root = tmp_path / "linked_chest_xray"
    (root / "test" / "PNEUMONIA").mkdir(parents=True)
    (root / "train").symlink_to(real / "train", target_is_directory=True)
    (root / "test" / "NORMAL").symlink_to(real / "test" / "NORMAL", target_is_directory=True)
    for f in sorted((real / "test" / "PNEUMONIA").iterdir()):
        (root / "test" / "PNEUMONIA" / f.name).symlink_to(f)
    return root


@pytest.fixture
def linked_coronahack(coronahack_root, tmp_path) -> Path:
    """The CSV a linked file, the nested image folders one linked folder (the CSV's train/ and test/
    lie two levels inside the link)."""
    real = coronahack_root.resolve()
    root = tmp_path / "linked_coronahack"
    root.mkdir()
    (root / sources.CORONAHACK_CSV).symlink_to(real / sources.CORONAHACK_CSV)
    outer = "Coronahack-Chest-XRay-Dataset"
    (root / outer).symlink_to(real / outer, target_is_directory=True)
    return root


def _rows(scan: sources.Scan) -> pd.DataFrame:
    return scan.manifest.drop(columns="path").reset_index(drop=True)


def test_kermany_through_linked_split_class_and_file_links_reads_as_the_real_folder(kermany_root, linked_kermany):
    direct, linked = sources.kermany_manifest(kermany_root), sources.kermany_manifest(linked_kermany)
    pd.testing.assert_frame_equal(_rows(linked), _rows(direct))
    assert len(linked.manifest) == 5840 and not linked.problems
    # the paths are the ways through the links, as the user gave them
    assert all(p.startswith(str(linked_kermany.resolve())) for p in linked.manifest["path"])
    assert sources.scan(linked_kermany).manifest.shape == direct.manifest.shape


def test_coronahack_through_a_linked_csv_and_linked_image_folders(coronahack_root, linked_coronahack):
    direct, linked = sources.coronahack_manifest(coronahack_root), sources.coronahack_manifest(linked_coronahack)
    pd.testing.assert_frame_equal(_rows(linked), _rows(direct))
    assert len(linked.manifest) == 5907  # 5910 rows, 3 COVID-19 files missing in the real download
    assert [p.reason for p in linked.problems] == [p.reason for p in direct.problems]
    assert sources.detect_layout(linked_coronahack) == "coronahack"


def test_inspect_through_links_counts_every_image(linked_kermany):
    r = run("study.data", "inspect", str(linked_kermany))
    assert r.returncode == 0, r.stderr
    assert "kermany layout, 5840 usable images" in r.stdout
    assert "train:  5216 images  NORMAL  1341  PNEUMONIA  3875" in r.stdout
    assert "no problems found" in r.stdout


def test_a_data_set_through_links_and_directly_is_one_cache_entry(kermany_root, linked_kermany, tmp_path):
    """The key is each file's real path (+ size, mtime, label): the linked test split reuses the entry
    the direct one built, without decoding again, and gives the same pixels."""
    direct = sources.kermany_manifest(kermany_root).manifest
    linked = sources.kermany_manifest(linked_kermany).manifest
    direct, linked = direct[direct.split == "test"], linked[linked.split == "test"]
    assert cache.cache_key(linked, 32) == cache.cache_key(direct, 32)
    a = cache.decoded(direct, 32, tmp_path / "cache", quiet=True)
    entries = sorted(os.listdir(tmp_path / "cache"))
    b = cache.decoded(linked, 32, tmp_path / "cache", quiet=True)
    assert sorted(os.listdir(tmp_path / "cache")) == entries  # nothing new written
    assert a.path == b.path and (a.images == b.images).all()
    assert list(b.manifest["path"]) == list(linked["path"])  # rows keep the paths this manifest gave


def test_a_failure_is_named_by_the_path_this_run_gave(tmp_path):
    """An entry built through one path and opened through a link names the file by the link."""
    real = tmp_path / "real"
    real.mkdir()
    (real / "bad.jpeg").write_bytes(b"not an image at all")
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    man = lambda folder: pd.DataFrame({"path": [str(folder / "bad.jpeg")], "label": [0]})  # noqa: E731
    first = cache.decoded(man(real), 32, tmp_path / "cache", quiet=True)
    again = cache.decoded(man(tmp_path / "link"), 32, tmp_path / "cache", quiet=True)
    assert first.key == again.key
    assert [p.path for p in again.problems] == [str(tmp_path / "link" / "bad.jpeg")]


def test_train_through_links(linked_kermany, cache_dir, tmp_path):
    """study.train on the linked data root: the real counts, test AUC well above chance (1 epoch, 32 px)."""
    out = tmp_path / "run"
    r = run(
        "study.train",
        "--data-root",
        str(linked_kermany),
        "--no-pretrain",
        "--model",
        "cnn",
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--out",
        str(out),
        cache_dir=cache_dir,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["test_n"] == 624 and m["data"]["train_n"] + m["data"]["val_n"] == 5216
    assert m["test_auc"] > 0.8


def test_audit_through_links(linked_kermany, linked_coronahack, cache_dir, tmp_path):
    r = run(
        "study.audit",
        "--data-root",
        str(linked_kermany),
        "--pretrain-root",
        str(linked_coronahack),
        "--cache-dir",
        str(cache_dir),
        "--out",
        str(tmp_path / "audit"),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    s = pd.read_parquet(tmp_path / "audit" / "audit_summary.parquet").set_index(["a_set", "b_set"])
    t = s.loc[("kermany-test", "coronahack-test")]
    assert (t.a_images, t.by_name, t.by_content) == (624, 624, 624)
    tr = s.loc[("kermany-train", "coronahack-train")]
    assert (tr.a_images, tr.by_name, tr.by_content) == (5216, 5216, 5216)


def _loop_folder(tmp_path: Path, kermany_root: Path) -> tuple[Path, Path]:
    """A Kermany folder of links whose train/NORMAL/ holds a link back to train/ (2 hops: a real
    folder `elsewhere/` linked as train/NORMAL/sub, and elsewhere/back → train)."""
    real = kermany_root.resolve()
    root = tmp_path / "loopy"
    (root / "train" / "NORMAL").mkdir(parents=True)
    (root / "train" / "PNEUMONIA").symlink_to(real / "train" / "PNEUMONIA", target_is_directory=True)
    (root / "test").symlink_to(real / "test", target_is_directory=True)
    for f in sorted((real / "train" / "NORMAL").iterdir())[:5]:
        (root / "train" / "NORMAL" / f.name).symlink_to(f)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / "train" / "NORMAL" / "sub").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "back").symlink_to(root / "train", target_is_directory=True)
    return root, root / "train" / "NORMAL" / "sub" / "back"


def test_a_link_loop_is_one_error_line_naming_the_link_and_the_fix(kermany_root, tmp_path):
    root, link = _loop_folder(tmp_path, kermany_root)
    line = _one_error_line(run("study.data", "inspect", str(root)))
    assert line.startswith(f"error: {link}: symbolic link loop: it leads back to {root / 'train'}")
    assert "remove that link or point it at a folder outside" in line
    line = _one_error_line(run("study.train", "--data-root", str(root), "--out", str(tmp_path / "never")))
    assert line.startswith(f"error: --data-root: {link}: symbolic link loop")
    assert not (tmp_path / "never").exists()


def test_a_loop_in_a_coronahack_folder_names_the_flag(linked_coronahack, kermany_root, tmp_path):
    (linked_coronahack / "extra").mkdir()  # inside tmp_path: never write into the linked real data
    loop = linked_coronahack / "extra" / "again"
    loop.symlink_to(linked_coronahack, target_is_directory=True)
    r = run("study.audit", "--data-root", str(kermany_root), "--pretrain-root", str(linked_coronahack))
    line = _one_error_line(r)
    assert line.startswith(f"error: --pretrain-root: {loop}: symbolic link loop")


def test_a_root_that_is_a_link_loop_itself(tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    line = _one_error_line(run("study.data", "inspect", str(tmp_path / "a")))
    assert "symbolic link loop in the path itself" in line


def test_broken_image_link_is_reported_by_name_not_decoded(linked_kermany):
    gone = linked_kermany / "test" / "PNEUMONIA" / "gone.jpeg"
    gone.symlink_to(linked_kermany / "nowhere.jpeg")
    scan = sources.kermany_manifest(linked_kermany)
    assert str(gone) not in set(scan.manifest["path"])
    assert [str(p) for p in scan.problems] == [
        f"{gone}: broken symbolic link: it points to {linked_kermany / 'nowhere.jpeg'}, which does not exist"
    ]


def test_walk_two_links_to_one_folder_are_no_loop(tmp_path):
    (tmp_path / "data" / "x").mkdir(parents=True)
    (tmp_path / "data" / "x" / "f").write_text("")
    for name in ("a", "b"):
        (tmp_path / name).symlink_to(tmp_path / "data", target_is_directory=True)
    files = sorted(str(here.relative_to(tmp_path) / f) for here, _, fs in walk(tmp_path) for f in fs)
    assert files == ["a/x/f", "b/x/f", "data/x/f"]
