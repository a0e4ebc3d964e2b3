"""python -m study.audit — which images of the pre-training source are also in the target?

Compares every pair of sets (target train/test, source train/test) by file name, by patient id and
by image content (a perceptual hash of the decoded image, robust to re-encoding and resizing), and
counts duplicates inside each set. Writes <out>/audit.parquet (one row per image with a match:
set, name, patient, which kinds of match, the matching image) and <out>/audit_summary.parquet
(counts per pair of sets), and prints the summary.

Pre-training in study.sweep and study.ablate already excludes every source image whose name,
patient or content occurs in the target's validation or test set (unless --allow-test-overlap).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m study.audit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  python -m study.audit --pretrain-root ~/data/coronahack --data-root ~/data/chest_xray")
    p.add_argument("--data-root", help="Kaggle chest_xray/ folder (target); default: the synthetic phantoms")
    p.add_argument("--pretrain-root", help="Kaggle CoronaHack folder (source); default: the synthetic source domain")
    p.add_argument("--image-size", type=int, default=64, help="decode size the hashes are computed at (default 64)")
    p.add_argument("--cache-dir", help="decoded-image cache (default $PNEUMO_RAY_CACHE or ~/.cache/pneumo_ray)")
    p.add_argument("--out", default="results/audit", help="folder for audit.parquet and audit_summary.parquet")
    return p


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    from pneumo_ray.audit import audit, format_summary
    from pneumo_ray.datasets import audit_sets
    from pneumo_ray.results import write_audit

    for flag, root in (("--data-root", args.data_root), ("--pretrain-root", args.pretrain_root)):
        if root is not None and not Path(root).is_dir():
            print(f"error: {flag} {root}: no such folder", file=sys.stderr)
            return 2
    t0 = time.time()
    sets, problems = audit_sets(args.data_root, args.pretrain_root, size=args.image_size, cache_dir=args.cache_dir)
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    print("sets: " + ", ".join(f"{k} ({len(v)} images)" for k, v in sets.items()))
    pairs, summary = audit(sets)
    write_audit(Path(args.out), pairs, summary)
    print(format_summary(summary))
    print(f"\n{len(pairs)} matching image rows → {args.out}/audit.parquet, audit_summary.parquet ({time.time() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
