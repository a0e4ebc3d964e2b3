"""python -m study.report — figures and an HTML report from finished result folders.

Reads only the Parquet tables and run.json that `study.sweep` and `study.ablate` write (no
retraining, no Ray) and writes <first folder>/report/:
  report.html        every figure with a short summary table; open it in any browser, offline
  figures/*.png|svg  each figure as PNG (shown on the page) and SVG (vector, for papers)
  summary.json       the page's tables, ablation verdicts and notes, for scripts

Sections: 1. model comparison on test (ROC with bootstrap band, precision–recall, confusion
matrices at the decision threshold, calibration); 2. learning curves (ASHA-stopped trials
marked); 3. sweep insight (optimisation history, fANOVA hyper-parameter importance, validation AUC
against each searched parameter); 4. ablations (forest plot of ΔAUC vs transfer, per-arm metrics,
leakage audit); 5. test images with the model's probabilities and Grad-CAM heat-maps (these need
the run's data and checkpoint on this machine, else they are skipped with a note).

Give a sweep folder and an ablation folder together to combine them into one report. Whatever
a folder lacks (e.g. an ablation without a sweep) is skipped, and the report says so, printed
and at the top of the page. A damaged file (truncated, not Parquet or JSON, without the columns the
report reads) is named in one `warning:` line; the parts that need it are left out with a note on
the page, and the rest is written (exit 0). A path that is no results folder, results with nothing
to show, an --out that cannot be written or a bad flag value: one `error:` line, exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from pneumo_ray.config.errors import UserError
from study import common


def get_args_parser() -> argparse.ArgumentParser:
    p = common.ArgumentParser(
        prog="python -m study.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  python -m study.report results/my-sweep                     # -> results/my-sweep/report/report.html\n"
        "  python -m study.report results/my-sweep results/my-ablation # one combined report, in my-sweep/report/\n"
        "  python -m study.report results/demo --out /tmp/demo-report --no-images",
    )
    p.add_argument("folders", nargs="+", type=Path, help="result folders (a sweep and/or ablations)")
    p.add_argument("--out", type=Path, help="where to write (default: <first folder>/report)")
    p.add_argument("--top", type=int, default=3, help="trials per model in colour in the learning curves (default 3)")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples of the test images (default 2000)")
    p.add_argument("--examples", type=int, default=4, help="test images per outcome (TP, FN, FP, TN) (default 4)")
    p.add_argument("--gradcam", type=int, default=4, help="images with a Grad-CAM heat-map (default 4; 0 = none)")
    p.add_argument(
        "--no-images", action="store_true", help="skip the test images and Grad-CAM (no data or torch needed)"
    )
    p.add_argument("--seed", type=int, default=0, help="bootstrap and fANOVA seed (default 0)")
    common.add_debug_flag(p)
    return p


# flag -> (smallest value, why)
MINIMA = {
    "--top": (1, "trials per model drawn in colour"),
    "--n-boot": (100, "fewer bootstrap resamples give unstable 95% intervals"),
    "--examples": (1, "test images per outcome; --no-images leaves the pictures out"),
    "--gradcam": (0, "0 = no Grad-CAM"),
    "--seed": (0, "a random seed is not negative"),
}


def main(argv: list[str] | None = None, *, strict: bool = False) -> int:
    """`strict`: a part whose data make it fail raises (with its traceback) instead of being left out."""
    args = get_args_parser().parse_args(argv)
    for flag, (low, what) in MINIMA.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value < low:
            raise UserError(f"{flag} {value}: must be at least {low} ({what})")
    if args.out is not None:
        common.check_writable_folder("--out", args.out)
    from pneumo_ray.report.build import build_report

    t0 = time.time()
    report = build_report(
        args.folders,
        args.out,
        n_boot=args.n_boot,
        top=args.top,
        examples=args.examples,
        gradcam=args.gradcam,
        images=not args.no_images,
        seed=args.seed,
        strict=strict or args.debug,
    )
    left_out = f", {len(report.warnings)} part(s) left out (the warnings above)" if report.warnings else ""
    print(
        f"report: {report.html.resolve()} ({len(report.figures)} figures, {len(report.notes)} notes{left_out}, "
        f"{time.time() - t0:.1f} s)"
    )
    if not report.figures and not report.tables:
        raise UserError(
            f"nothing to report: no part could be made from these results (the page {report.html} says why)"
        )
    return 0


if __name__ == "__main__":
    # --debug (consumed by run_main) also makes a part that fails on its data raise, with its traceback
    debug = "--debug" in sys.argv[1:] or os.environ.get("PNEUMO_RAY_DEBUG") == "1"
    sys.exit(common.run_main(lambda argv: main(argv, strict=debug)))
