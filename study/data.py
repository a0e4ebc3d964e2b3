"""python -m study.data — look at a data folder before training on it.

    python -m study.data inspect PATH [--strict] [--decode]

PATH is a Kaggle chest_xray/ (Kermany) folder or a CoronaHack folder (detected by its metadata CSV).
"""

from __future__ import annotations

import argparse
import sys


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m study.data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    ins = sub.add_parser("inspect", help="counts per split and class, patients, and every unusable file with the reason",
                         description="Counts per split and class, patients, and every unusable file or folder "
                                     "with the reason. Exit 0 if the folder is usable; with --strict, exit 1 when "
                                     "anything was reported.")
    ins.add_argument("path", help="a Kaggle chest_xray/ folder or a CoronaHack folder")
    ins.add_argument("--strict", action="store_true", help="exit 1 if any problem was reported")
    ins.add_argument("--decode", type=int, metavar="SIZE", default=0,
                     help="also decode every image at SIZE px into the cache, reporting unreadable files")
    ins.add_argument("--subset", choices=["all", "covid"], default="all",
                     help="CoronaHack only: all pneumonia (default) or COVID-19 vs normal")
    ins.add_argument("--cache-dir", help="decoded-image cache (with --decode)")
    return p


def inspect(args) -> int:
    from pneumo_ray import cache, sources

    try:
        layout = sources.detect_layout(args.path)
        scan = sources.scan(args.path, args.subset)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    m = scan.manifest
    print(f"{args.path}: {layout} layout, {len(m)} usable images, {m['patient'].nunique()} patients")
    for split in sorted(m["split"].unique()):
        part = m[m["split"] == split]
        n0, n1 = int((part.label == 0).sum()), int((part.label == 1).sum())
        print(f"  {split:5s}: {len(part):5d} images  NORMAL {n0:5d}  PNEUMONIA {n1:5d}  patients {part['patient'].nunique()}")
        merged = part[part["orig_split"] != split]
        if len(merged):
            print(f"         ({len(merged)} of them from {sorted(set(merged.orig_split))} merged into {split})")
    if scan.ignored:
        print(f"  ignored {len(scan.ignored)} OS clutter files / duplicate copies (e.g. {scan.ignored[0]})")
    problems = list(scan.problems)
    if args.decode:
        dec = cache.decoded(m, args.decode, args.cache_dir, label=f"{layout} at {args.decode}px")
        problems += dec.problems
        print(f"  decoded {len(dec.manifest)} of {len(m)} images at {args.decode}px into {dec.path}")
    if problems:
        print(f"{len(problems)} problem(s):")
        for p in problems:
            print(f"  {p}")
    else:
        print("no problems found")
    if len(m) == 0:
        return 1
    return 1 if (args.strict and problems) else 0


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    return {"inspect": inspect}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
