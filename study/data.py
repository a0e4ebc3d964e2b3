"""python -m study.data — look at a data folder before training on it.

    python -m study.data inspect PATH [--strict] [--decode SIZE] [--list]
    python -m study.data download [--dest DIR]      # the two Kaggle data sets, with your Kaggle token

PATH is a Kaggle chest_xray/ (Kermany) folder or a CoronaHack folder (detected by its metadata CSV).
A folder that cannot be a data set (absent, empty, neither layout, train/ or test/ or a class
missing, a CoronaHack CSV without its columns, labels or images) is one line `error: ...`, exit 2.
"""

from __future__ import annotations

import argparse
import sys

from study import common


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m study.data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    ins = sub.add_parser(
        "inspect",
        help="counts per split and class, patients, and every unusable file with the reason",
        description="Counts per split and class, patients, and every unusable file or folder "
        "with the reason, one line per kind of problem (--list: one per file). Without --decode the "
        "files are checked cheaply: empty, first bytes of no image format, a JPEG without its end "
        "marker or a PNG without its end chunk. Exit 0 if the folder is usable; with --strict, exit 1 "
        "when any problem was reported; exit 2 (one line `error: ...`) for a folder that cannot be "
        "a data set.",
    )
    ins.add_argument("path", help="a Kaggle chest_xray/ folder or a CoronaHack folder")
    ins.add_argument("--strict", action="store_true", help="exit 1 if any problem was reported")
    ins.add_argument(
        "--decode",
        type=int,
        metavar="SIZE",
        default=0,
        help="also decode every image at SIZE px into the cache, reporting unreadable files",
    )
    ins.add_argument("--list", action="store_true", help="every problem on its own line (default: one line per kind)")
    ins.add_argument(
        "--subset",
        choices=["all", "covid"],
        default="all",
        help="CoronaHack only: all pneumonia (default) or COVID-19 vs normal",
    )
    ins.add_argument("--cache-dir", help="decoded-image cache (with --decode)")
    dl = sub.add_parser(
        "download",
        help="fetch the Kaggle data sets (needs kagglehub and a Kaggle API token)",
        description="Download Kaggle 'paultimothymooney/chest-xray-pneumonia' (Kermany) and "
        "'praveengovi/coronahack-chest-xraydataset' (CoronaHack) with kagglehub, then "
        "link them as DEST/chest_xray and DEST/coronahack. Needs `pip install kagglehub` "
        "and a token in ~/.kaggle/kaggle.json or KAGGLE_USERNAME/KAGGLE_KEY. On a "
        "cluster, use a DEST on shared storage (e.g. /mnt/efs/pneumo-ray/data), once.",
    )
    dl.add_argument("--dest", default="data", help="where the data sets end up (default: ./data)")
    dl.add_argument("--which", default="chest_xray,coronahack", help="comma-separated: chest_xray,coronahack")
    for command in (ins, dl):
        common.add_debug_flag(command)
    return p


KAGGLE = {
    "chest_xray": "paultimothymooney/chest-xray-pneumonia",
    "coronahack": "praveengovi/coronahack-chest-xraydataset",
}


def download(args) -> int:
    """Explicit network access, only when asked; every failure says what to do."""
    import os
    from pathlib import Path

    which = [w.strip() for w in args.which.split(",") if w.strip()]
    unknown = [w for w in which if w not in KAGGLE]
    if unknown:
        print(f"error: unknown data set(s) {unknown}; choose from {sorted(KAGGLE)}", file=sys.stderr)
        return 2
    token = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle")) / "kaggle.json"
    if not token.exists() and not (os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY")):
        print(
            f"error: no Kaggle API token: create one at kaggle.com → Settings → API → 'Create New Token', save it "
            f"as {token} (chmod 600) or set KAGGLE_USERNAME and KAGGLE_KEY; or download the two data sets by hand "
            f"({', '.join(KAGGLE[w] for w in which)}) and pass their folders with --data-root / --pretrain-root",
            file=sys.stderr,
        )
        return 2
    try:
        import kagglehub
    except ImportError:
        print(
            "error: kagglehub is not installed: pip install kagglehub (or download by hand, see --help)",
            file=sys.stderr,
        )
        return 2
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    for w in which:
        print(f"downloading {KAGGLE[w]} ...", flush=True)
        try:
            path = Path(kagglehub.dataset_download(KAGGLE[w]))
        except Exception as e:  # noqa: BLE001 - offline, auth and quota errors all end here
            print(
                f"error: could not download {KAGGLE[w]}: {type(e).__name__}: {e} (offline? token valid? "
                f"accepted the data set's terms on kaggle.com?)",
                file=sys.stderr,
            )
            return 1
        link = dest / w
        if link.is_symlink() or not link.exists():
            if link.is_symlink():
                link.unlink()
            link.symlink_to(path, target_is_directory=True)
        print(f"  {w}: {path} (linked as {link}); check it with: python -m study.data inspect {link}")
    return 0


def inspect(args: argparse.Namespace) -> int:
    from pneumo_ray.data import cache, checks, sources

    scan = sources.scan(args.path, args.subset)  # UserError (exit 2) for a folder that cannot be a data set
    layout = sources.detect_layout(args.path)
    m = scan.manifest
    print(f"{args.path}: {layout} layout, {len(m)} usable images, {m['patient'].nunique()} patients")
    for split in sorted(m["split"].unique()):
        part = m[m["split"] == split]
        n0, n1 = int((part.label == 0).sum()), int((part.label == 1).sum())
        patients = part["patient"].nunique()
        print(f"  {split:5s}: {len(part):5d} images  NORMAL {n0:5d}  PNEUMONIA {n1:5d}  patients {patients}")
        merged = part[part["orig_split"] != split]
        if len(merged):
            print(f"         ({len(merged)} of them from {sorted(set(merged.orig_split))} merged into {split})")
    splits = [set(m.loc[m["split"] == s, "patient"]) for s in ("train", "test")]
    if all(splits):  # patient = person number + category (`python -m study.audit --patients` shows why)
        print(f"  patients in both train and test: {len(splits[0] & splits[1])} (patient = person number + category)")
    if scan.ignored:
        print(f"  ignored {len(scan.ignored)} OS clutter files / duplicate copies (e.g. {scan.ignored[0]})")
    file_problems, notes = checks.check_image_files(m["path"])
    for line in checks.grouped(notes):
        print(f"  note: {line}")
    problems = list(scan.problems)
    if args.decode:
        dec = cache.decoded(m, args.decode, args.cache_dir, label=f"{layout} at {args.decode}px")
        failed = {p.path for p in dec.problems}  # the decoder's reason for a file it met, the cheap one else
        problems += [p for p in file_problems if p.path not in failed] + dec.problems
        print(f"  decoded {len(dec.manifest)} of {len(m)} images at {args.decode}px into {dec.path}")
    else:
        problems += file_problems
    if problems:
        print(f"{len(problems)} problem(s):")
        for line in map(str, problems) if args.list else checks.grouped(problems):
            print(f"  {line}")
    else:
        print("no problems found")
    if len(m) == 0:
        return 1
    return 1 if (args.strict and problems) else 0


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    return {"inspect": inspect, "download": download}[args.command](args)


if __name__ == "__main__":
    sys.exit(common.run_main(main))
