"""python -m study.offline — install pneumo-ray and its data on a machine without a package index.

A GPU server in a hospital often has Python and PyTorch but no package index, and takes files only
in parts of limited size. Where an index is reachable, pack a wheelhouse for the target's Python
(without what the target already has; never torch or torchvision) and the data sets, each as a tar
stream cut into parts (default at most 60 MB) with a manifest of SHA-256 checksums. Carry the parts
and their manifest over; on the target, every part is checked before anything is unpacked, then pip
installs from the wheelhouse alone (--no-index). Needs only the standard library on the target.

  where an index is reachable:
    python3.12 -m pip list --format=freeze > have.txt          # run ON THE TARGET, carry it back
    python -m study.offline wheels --python-version 3.12 --have have.txt --out bundle/
    python -m study.offline data --data-root ~/data/chest_xray --pretrain-root ~/data/coronahack --out bundle/
  on the target, with the repository and bundle/ copied there:
    python3.12 -m venv --system-site-packages .venv              # sees the target's own torch
    .venv/bin/python -m study.offline install bundle/wheelhouse.manifest.json
    .venv/bin/python -m study.offline join bundle/data.manifest.json --into ../shared/data
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pneumo_ray.config.errors import UserError
from pneumo_ray.deploy import parts, wheelhouse
from study import common

ROOT = Path(__file__).resolve().parents[1]


def _part_bytes(mb: float) -> int:
    return int(mb * 1_000_000)


def get_args_parser() -> argparse.ArgumentParser:
    p = common.ArgumentParser(
        prog="python -m study.offline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="{wheels,data,join,install}")
    w = sub.add_parser("wheels", help="pack the wheelhouse for the target (needs a package index)")
    w.add_argument("--out", required=True, help="folder for wheelhouse.tar.part-NNN and wheelhouse.manifest.json")
    w.add_argument(
        "--python-version",
        default=f"{sys.version_info.major}.{sys.version_info.minor}",
        help="the target's Python, e.g. 3.12 (default: this one's, %(default)s)",
    )
    w.add_argument(
        "--have",
        help="the target's `python -m pip list --format=freeze`: those packages keep their versions and are not "
        "packed (default: pack everything but torch and torchvision)",
    )
    w.add_argument(
        "--skip",
        default=",".join(wheelhouse.NEVER_PACKED),
        help="requirements left to the target, comma-separated (default: %(default)s; always kept out)",
    )
    w.add_argument(
        "--platform",
        action="append",
        help=f"pip platform tag of the target, repeatable (default: {' '.join(wheelhouse.LINUX_X86_64)})",
    )
    d = sub.add_parser("data", help="pack the data sets (Kaggle layouts) as parts")
    d.add_argument("--out", required=True, help="folder for data.tar.part-NNN and data.manifest.json")
    d.add_argument("--data-root", required=True, help="Kaggle chest_xray/ folder (unpacked as chest_xray/)")
    d.add_argument("--pretrain-root", help="Kaggle CoronaHack folder (unpacked as coronahack/)")
    for sp in (w, d):
        sp.add_argument("--part-mb", type=float, default=60, help="largest part in MB (10^6 bytes; default 60)")
    j = sub.add_parser("join", help="check every part, then unpack the archive")
    j.add_argument("manifest", help="the .manifest.json that came with the parts")
    j.add_argument("--into", required=True, help="folder to unpack into")
    i = sub.add_parser("install", help="check and unpack the wheelhouse, then pip install from it alone")
    i.add_argument("manifest", help="wheelhouse.manifest.json")
    i.add_argument("--python", default=sys.executable, help="the Python to install into (default: this one)")
    i.add_argument("--into", help="where to unpack the wheels (default: beside the manifest, wheelhouse/)")
    common.add_debug_flag(p)
    return p


def _folder(flag: str, path: str | None) -> Path | None:
    if path is None:
        return None
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise UserError(f"{flag} {path}: no such folder")
    return folder


def wheels(args: argparse.Namespace) -> int:
    have = {}
    if args.have:
        try:
            have = wheelhouse.installed(Path(args.have).read_text())
        except OSError as e:
            raise UserError(
                f"--have {args.have}: cannot be read ({e.strerror}); give the target's pip freeze"
            ) from None
        if not have:
            raise UserError(f"--have {args.have}: no `name==version` line; give `pip list --format=freeze` output")
    out = Path(args.out)
    common.check_writable_folder("--out", out)
    skip = tuple(s.strip() for s in args.skip.split(",") if s.strip()) + wheelhouse.NEVER_PACKED
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        house = Path(tmp) / "wheelhouse"
        info = wheelhouse.build(
            ROOT / "requirements.txt",
            house,
            python_version=args.python_version,
            have=have,
            skip=dict.fromkeys(skip),
            platforms=tuple(args.platform or wheelhouse.LINUX_X86_64),
        )
        size = sum(f.stat().st_size for f in house.iterdir())
        stripped = ", ".join(f"{v} unused files taken out of {k}" for k, v in info["stripped"].items())
        print(
            f"{len(info['wheels'])} wheels, {size / 1e6:.1f} MB (left out, the target has them: "
            f"{len(info['left_out'])}; {stripped})"
        )
        packed = parts.pack([(house, "wheelhouse")], out, "wheelhouse", _part_bytes(args.part_mb), info)
    print(
        f"wrote {packed.parts} part(s), {packed.bytes / 1e6:.1f} MB, and {packed.manifest} ({time.time() - t0:.0f} s)"
    )
    return 0


def data(args: argparse.Namespace) -> int:
    entries = [(_folder("--data-root", args.data_root), "chest_xray")]
    if args.pretrain_root:
        entries.append((_folder("--pretrain-root", args.pretrain_root), "coronahack"))
    common.check_writable_folder("--out", args.out)
    t0 = time.time()
    packed = parts.pack(
        entries, Path(args.out), "data", _part_bytes(args.part_mb), {"folders": [e[1] for e in entries]}
    )
    print(
        f"wrote {packed.parts} part(s), {packed.bytes / 1e6:.1f} MB, and {packed.manifest} ({time.time() - t0:.0f} s)"
    )
    return 0


def join(args: argparse.Namespace) -> int:
    common.check_writable_folder("--into", args.into)
    manifest = parts.unpack(Path(args.manifest), Path(args.into))
    print(f"checked {len(manifest['parts'])} part(s) and unpacked {manifest['name']} into {args.into}")
    return 0


def install(args: argparse.Namespace) -> int:
    manifest_path = Path(args.manifest)
    into = Path(args.into) if args.into else manifest_path.parent
    common.check_writable_folder("--into", into)
    manifest = parts.unpack(manifest_path, into)
    wanted = manifest["contents"].get("python_version")
    target = subprocess.run(
        [args.python, "-c", "import sys; print(f'{sys.version_info.major}.{sys.version_info.minor}')"],
        capture_output=True,
        text=True,
    )
    if target.returncode != 0:
        raise UserError(f"--python {args.python}: does not run; give the target's Python")
    if wanted and target.stdout.strip() != wanted:
        raise UserError(
            f"{manifest_path}: its wheels are for Python {wanted}, --python {args.python} is "
            f"{target.stdout.strip()}; pack them again with --python-version {target.stdout.strip()}"
        )
    cmd = wheelhouse.install_command(args.python, into / "wheelhouse")
    print(f"checked {len(manifest['parts'])} part(s) on {platform.node()}; " + " ".join(cmd))
    return subprocess.run(cmd).returncode


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    return {"wheels": wheels, "data": data, "join": join, "install": install}[args.command](args)


if __name__ == "__main__":
    sys.exit(common.run_main(main))
