"""python -m study.audit — which images of the pre-training source are also in the target?

Compares every pair of sets (target train/test, source train/test) by file name, by patient id and
by image content (a perceptual hash of the decoded image, robust to re-encoding and resizing), and
counts duplicates inside each set. Writes <out>/audit.parquet (one row per image with a match:
set, name, patient, which kinds of match, the matching image) and <out>/audit_summary.parquet
(counts per pair of sets), and prints the summary.

With --patients it prints, from the file names alone (no decoding), the evidence behind the patient
definition every split, audit and exclusion uses: patients shared by Kermany's train and test when
`personN_bacteria_*` and `personN_virus_*` are one patient vs two, and the numbering facts that
decide it (the chosen one: patient = person number + category).

Pre-training in study.sweep and study.ablate already excludes every source image whose name,
patient or content occurs in the target's validation or test set (unless --allow-test-overlap), and
fine-tuning, by the same rule, every target-train image whose name, patient or content is in the
test set (none on the real data: Kermany's train and test share none).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pneumo_ray.config.data import check_image_size
from pneumo_ray.config.errors import UserError
from study import common


def get_args_parser() -> argparse.ArgumentParser:
    p = common.ArgumentParser(
        prog="python -m study.audit",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  python -m study.audit --pretrain-root ~/data/coronahack --data-root ~/data/chest_xray\n"
        "  python -m study.audit --patients --data-root ~/data/chest_xray     # patient-definition evidence",
    )
    d = common.add_data_args(p)
    d.add_argument("--image-size", type=int, default=64, help="decode size the hashes are computed at (default 64)")
    p.add_argument(
        "--patients",
        action="store_true",
        help="print the evidence table for the patient definition (personN_bacteria/virus: one patient "
        "or two?) from --data-root's file names, then exit; no decoding, no --pretrain-root needed",
    )
    p.add_argument("--out", default="results/audit", help="folder for audit.parquet and audit_summary.parquet")
    common.add_debug_flag(p)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(common.attach_negative_values(sys.argv[1:] if argv is None else argv, parser))
    common.check_data_folders(args)
    if args.patients:
        return patient_evidence(args.data_root)
    check_image_size(args.image_size)
    common.check_writable_folder("--out", args.out)
    from pneumo_ray.data.leakage import audit, format_split_overlap, format_summary
    from pneumo_ray.data.study_data import audit_sets
    from pneumo_ray.storage.results import write_audit

    t0 = time.time()
    sets, problems = audit_sets(args.data_root, args.pretrain_root, size=args.image_size, cache_dir=args.cache_dir)
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    print("sets: " + ", ".join(f"{k} ({len(v)} images)" for k, v in sets.items()))
    pairs, summary = audit(sets)
    write_audit(Path(args.out), pairs, summary)
    print(format_summary(summary))
    prefix = next(iter(sets), "").rsplit("-", 1)[0]  # the target's sets come first
    if f"{prefix}-train" in sets and f"{prefix}-test" in sets:
        print("\n" + format_split_overlap(summary, f"{prefix}-train", f"{prefix}-test"))
    print(
        f"\n{len(pairs)} matching image rows → {args.out}/audit.parquet, audit_summary.parquet "
        f"({time.time() - t0:.1f} s)"
    )
    return 0


def patient_evidence(data_root: str | None) -> int:
    """Print the patient-definition evidence of a Kermany folder's file names."""
    from pneumo_ray.data.leakage import format_patient_evidence, patient_rule_evidence
    from pneumo_ray.data.sources import kermany_manifest

    if data_root is None:
        raise UserError("--patients needs --data-root (a Kaggle chest_xray/ folder): it reads its file names")
    scan = kermany_manifest(data_root)
    for problem in scan.problems:
        print(f"warning: {problem}", file=sys.stderr)
    print(f"{data_root}: {len(scan.manifest)} images")
    print(format_patient_evidence(patient_rule_evidence(scan.manifest)))
    return 0


if __name__ == "__main__":
    sys.exit(common.run_main(main))
