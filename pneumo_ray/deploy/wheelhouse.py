"""A wheelhouse for a machine without a package index: every wheel `requirements.txt` needs on the
target's Python and platform, without what the target already has, made where an index is reachable.

- What the target has (`pip list --format=freeze` run there) is given to pip as constraints, so the
  resolution keeps the target's versions, and then those wheels are left out: nothing installed
  there is replaced. torch and torchvision are never packed (the target brings its own build, for
  its own GPU driver; they are gigabytes).
- Ray's wheel loses `ray/jars/` (the Java workers, 32 MB) and the dashboard's `*.js.map` source maps
  (1.5 MB): neither is used by a Python-only cluster. Its RECORD is rewritten to match.
"""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterable, Sequence
from fnmatch import fnmatch
from pathlib import Path

from pneumo_ray.config.errors import UserError

NEVER_PACKED = ("torch", "torchvision")  # the target's own build (CUDA, driver): never replaced
LINUX_X86_64 = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "linux_x86_64")
STRIPPED = {"ray": ("ray/jars/*", "*.js.map")}  # per project: members nothing here uses
REQUIREMENTS = "requirements-offline.txt"


def project(name: str) -> str:
    """A distribution's normalized name (PEP 503): `Opencv_Python.Headless` → `opencv-python-headless`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(line: str) -> str | None:
    """The project a requirements line asks for (None for a comment, an option or a blank line)."""
    text = line.split("#", 1)[0].strip()
    if not text or text.startswith("-"):
        return None
    m = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", text)
    return project(m.group(0)) if m else None


def offline_requirements(text: str, skip: Iterable[str] = NEVER_PACKED) -> str:
    """requirements.txt without the lines of `skip` (they stay the target's own)."""
    drop = {project(s) for s in skip}
    return "".join(line for line in text.splitlines(keepends=True) if requirement_name(line) not in drop)


def installed(freeze: str) -> dict[str, str]:
    """{project: version} of `pip list --format=freeze` / `pip freeze` output (`name==version` lines;
    editable, URL and `@ file://` lines are not versions pip can pin, and are left out)."""
    found = {}
    for line in freeze.splitlines():
        m = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)\s*", line)
        if m:
            found[project(m.group(1))] = m.group(2)
    return found


def wheel_project(path: Path) -> str:
    """The project of a wheel file name (`ray-2.60.0-cp312-…whl` → `ray`)."""
    return project(path.name.split("-", 1)[0])


def download(
    requirements: Path,
    dest: Path,
    *,
    python_version: str,
    platforms: Sequence[str] = LINUX_X86_64,
    constraints: Path | None = None,
) -> None:
    """`pip download` of binary wheels for `python_version` on `platforms` into `dest`."""
    abi = "cp" + python_version.replace(".", "")
    opts = ["--only-binary=:all:", "--dest", str(dest), "--python-version", python_version, "--implementation", "cp"]
    opts += [x for a in (abi, "abi3", "none") for x in ("--abi", a)]
    opts += [x for p in platforms for x in ("--platform", p)]
    opts += ["--constraint", str(constraints)] if constraints is not None else []
    opts += ["--requirement", str(requirements)]
    r = subprocess.run([sys.executable, "-m", "pip", "download", *opts], capture_output=True, text=True)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise UserError(f"pip download for Python {python_version} failed: {last} (is a package index reachable?)")


def strip_wheel(path: Path, patterns: Sequence[str]) -> int:
    """Rewrite the wheel at `path` without the members matching `patterns` (RECORD too). Returns the
    number of members dropped."""
    tmp = path.with_suffix(".stripped")
    dropped = 0
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        gone = {i.filename for i in src.infolist() if any(fnmatch(i.filename, p) for p in patterns)}
        for info in src.infolist():
            if info.filename in gone:
                dropped += 1
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines(keepends=True)
                data = "".join(x for x in lines if x.split(",", 1)[0] not in gone).encode()
            dst.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
    tmp.replace(path)
    return dropped


def build(
    requirements_txt: Path,
    dest: Path,
    *,
    python_version: str,
    have: dict[str, str],
    skip: Iterable[str] = NEVER_PACKED,
    platforms: Sequence[str] = LINUX_X86_64,
    log: Callable[[str], object] = print,
) -> dict:
    """The wheelhouse in `dest`: the wheels for `requirements_txt` minus `skip` and minus what the
    target `have`s ({project: version}), Ray stripped, and REQUIREMENTS to install from. Returns
    what it holds ({wheels, left_out, stripped})."""
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.whl"):
        old.unlink()
    skip = tuple(skip)
    reqs = dest / REQUIREMENTS
    reqs.write_text(offline_requirements(requirements_txt.read_text(), skip))
    constraints = None
    kept_by_target = {k: v for k, v in have.items() if k not in {project(s) for s in skip}}
    if kept_by_target:
        constraints = dest / "constraints-target.txt"
        constraints.write_text("".join(f"{k}=={v}\n" for k, v in sorted(kept_by_target.items())))
    log(f"pip download for Python {python_version} ({', '.join(platforms)}) …")
    download(reqs, dest, python_version=python_version, platforms=platforms, constraints=constraints)
    left_out, stripped = [], {}
    for wheel in sorted(dest.glob("*.whl")):
        name = wheel_project(wheel)
        if name in kept_by_target:
            left_out.append(wheel.name)
            wheel.unlink()
        elif name in STRIPPED:
            stripped[wheel.name] = strip_wheel(wheel, STRIPPED[name])
    if constraints is not None:
        constraints.unlink()
    wheels = sorted(w.name for w in dest.glob("*.whl"))
    return dict(
        python_version=python_version,
        platforms=list(platforms),
        wheels=wheels,
        left_out=left_out,
        stripped=stripped,
        skipped=list(skip),
    )


def install_command(python: str, wheelhouse: Path) -> list[str]:
    """The target's pip install from the wheelhouse alone (no index)."""
    return [
        python,
        "-m",
        "pip",
        "install",
        "--no-index",
        "--find-links",
        str(wheelhouse),
        "--requirement",
        str(wheelhouse / REQUIREMENTS),
    ]
