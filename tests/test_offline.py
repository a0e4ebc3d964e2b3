"""study.offline: folders as checked parts and back (real images, through the command), the
wheelhouse's pieces (requirements without torch, the target's freeze list, Ray's stripped wheel),
and damaged or missing parts refused in one line before anything is unpacked."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pneumo_ray.config.errors import UserError
from pneumo_ray.deploy import parts, wheelhouse
from study import common, offline

ROOT = Path(__file__).resolve().parents[1]


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def small_kermany(kermany_root, tmp_path_factory) -> Path:
    """A Kaggle-layout chest_xray/ of 600 real images (about 5 MB): test/ copied, train/ linked (packing
    follows links: a data set reached through links packs as its files)."""
    root = tmp_path_factory.mktemp("kermany") / "chest_xray"
    for split, how in (("test", shutil.copy), ("train", lambda src, dst: Path(dst).symlink_to(src))):
        for label in ("NORMAL", "PNEUMONIA"):
            (root / split / label).mkdir(parents=True)
            for src in sorted((kermany_root / split / label).iterdir())[:150]:
                how(src, root / split / label / src.name)
    return root


def _run(argv: list[str]) -> int:
    return common.run_main(offline.main, argv)


def test_data_in_parts_and_back_through_the_command(small_kermany, tmp_path, capsys):
    out = tmp_path / "bundle"
    assert _run(["data", "--data-root", str(small_kermany), "--out", str(out), "--part-mb", "1"]) == 0
    manifest = json.loads((out / "data.manifest.json").read_text())
    sizes = [p["bytes"] for p in manifest["parts"]]
    assert len(sizes) >= 3 and max(sizes) <= 1_000_000 and sum(sizes) == manifest["bytes"]
    assert sorted(f.name for f in out.iterdir()) == sorted(
        [p["file"] for p in manifest["parts"]] + ["data.manifest.json"]
    )
    assert _run(["join", str(out / "data.manifest.json"), "--into", str(tmp_path / "there")]) == 0
    unpacked = tmp_path / "there" / "chest_xray"
    assert _digests(unpacked) == _digests(small_kermany)  # links packed as the files they point to
    assert not any(p.is_symlink() for p in unpacked.rglob("*"))
    assert "checked" in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["flip", "cut", "missing"])
def test_a_damaged_or_missing_part_is_refused_before_unpacking(small_kermany, tmp_path, capsys, damage):
    out = tmp_path / "bundle"
    parts.pack([(small_kermany, "chest_xray")], out, "data", 1_000_000)
    part = out / "data.tar.part-001"
    if damage == "flip":
        blob = bytearray(part.read_bytes())
        blob[1000] ^= 0xFF
        part.write_bytes(bytes(blob))
    elif damage == "cut":
        part.write_bytes(part.read_bytes()[:-10])
    else:
        part.unlink()
    assert _run(["join", str(out / "data.manifest.json"), "--into", str(tmp_path / "there")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "data.tar.part-001" in err[0]
    assert ("copy it again" in err[0]) if damage != "missing" else ("missing" in err[0])
    assert not (tmp_path / "there").exists() or not any((tmp_path / "there").iterdir())


def test_requirements_for_the_target():
    text = (ROOT / "requirements.txt").read_text()
    kept = wheelhouse.offline_requirements(text)
    names = {wheelhouse.requirement_name(line) for line in kept.splitlines()} - {None}
    assert "torch" not in names and "torchvision" not in names
    assert {"ray", "optuna", "safetensors"} <= names
    freeze = "numpy==2.1.0\nTorch==2.11.0\npkg @ file:///tmp/x\n-e git+https://x/y#egg=z\n# c\nOpen_CV.Headless==4.9\n"
    assert wheelhouse.installed(freeze) == {"numpy": "2.1.0", "torch": "2.11.0", "open-cv-headless": "4.9"}


def test_rays_wheel_is_stripped_with_its_record(tmp_path):
    wheel = tmp_path / "ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl"
    members = {
        "ray/__init__.py": b"x = 1\n",
        "ray/jars/ray_dist.jar": b"j" * 100,
        "ray/dashboard/client/build/static/js/main.js": b"js",
        "ray/dashboard/client/build/static/js/main.js.map": b"map",
    }
    record = "".join(f"{name},sha256=abc,{len(data)}\n" for name, data in members.items())
    with zipfile.ZipFile(wheel, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
        z.writestr("ray-2.60.0.dist-info/RECORD", record + "ray-2.60.0.dist-info/RECORD,,\n")
    assert wheelhouse.strip_wheel(wheel, wheelhouse.STRIPPED["ray"]) == 2
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        rec = z.read("ray-2.60.0.dist-info/RECORD").decode()
        assert z.read("ray/__init__.py") == b"x = 1\n"
    assert names == {"ray/__init__.py", "ray/dashboard/client/build/static/js/main.js", "ray-2.60.0.dist-info/RECORD"}
    assert "jars" not in rec and ".js.map" not in rec and "main.js," in rec


def test_install_refuses_wheels_for_another_python(tmp_path, capsys):
    (tmp_path / "house" / "wheelhouse").mkdir(parents=True)
    (tmp_path / "house" / "wheelhouse" / wheelhouse.REQUIREMENTS).write_text("ray\n")
    parts.pack(
        [(tmp_path / "house" / "wheelhouse", "wheelhouse")],
        tmp_path / "b",
        "wheelhouse",
        1 << 20,
        {"python_version": "3.99"},
    )
    assert _run(["install", str(tmp_path / "b" / "wheelhouse.manifest.json"), "--python", sys.executable]) == 2
    err = capsys.readouterr().err
    assert "wheels are for Python 3.99" in err and "--python-version" in err


def test_parts_below_a_megabyte_are_refused(tmp_path):
    with pytest.raises(UserError, match="--part-mb"):
        parts.pack([(tmp_path, "x")], tmp_path / "o", "x", 1000)


def test_help_runs_without_the_heavy_dependencies():
    """The target runs study.offline before anything is installed: only the standard library loads."""
    code = (
        "import sys, study.offline; print(sorted(m for m in ('numpy', 'torch', 'pandas', 'ray') if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr
