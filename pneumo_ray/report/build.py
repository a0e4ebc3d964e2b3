"""build_report: result folders → <first folder>/report/ (report.html, figures/*.png + *.svg,
summary.json). Reads Parquet and run.json only; no training, no Ray. Each section makes what its
inputs allow and says, printed and on the page, what it could not make and why."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pneumo_ray.analysis.curves import bootstrap_counts, roc_band
from pneumo_ray.report import figures as figs
from pneumo_ray.report.html import Section, render
from pneumo_ray.report.inputs import Candidate, ReportData, candidates, finished_trials, load_report_data
from pneumo_ray.report.tables import (
    arm_table,
    audit_sentences,
    audit_table,
    best_config_table,
    test_metric_table,
    verdicts,
)


@dataclass
class Report:
    out: Path
    html: Path
    figures: dict = field(default_factory=dict)  # name -> matplotlib Figure, as drawn
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tables: dict = field(default_factory=dict)  # name -> DataFrame shown on the page
    verdicts: list[str] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    seconds: float = 0.0


class _Builder:
    def __init__(self, data: ReportData, out: Path, log, n_boot: int, seed: int, formats):
        self.data, self.out, self.log, self.n_boot, self.seed = data, out, log, n_boot, seed
        self.formats = tuple(formats)
        self.report = Report(out, out / "report.html")
        for n in data.notes:
            self.note(n)

    def note(self, text: str, section: Section | None = None) -> None:
        """A gap: printed, listed at the top of the page and, given a section, in it."""
        self.report.notes.append(text)
        if section is not None:
            section.notes.append(text)
        self.log(f"note: {text}")

    @staticmethod
    def aside(section: Section, text: str) -> None:
        """A gap already reported at the top (e.g. no sweep folder), repeated only in its section."""
        section.notes.append(text)

    def figure(self, section: Section, name: str, fig, caption: str) -> None:
        self.report.figures[name] = fig
        self.report.files += figs.save(fig, self.out / "figures", name, self.formats)
        section.blocks.append(("figure", name, caption, self.formats))

    def table(self, section: Section, name: str, title: str, frame: pd.DataFrame) -> None:
        self.report.tables[name] = frame
        section.blocks.append(("table", title, frame))


def build_report(
    folders: Iterable[str | os.PathLike],
    out: str | os.PathLike | None = None,
    *,
    n_boot: int = 2000,
    top: int = 3,
    examples: int = 4,
    gradcam: int = 4,
    images: bool = True,
    seed: int = 0,
    formats: Sequence[str] = ("png", "svg"),
    log: Callable[[str], object] | None = print,
) -> Report:
    """Write the report of `folders` (sweeps and/or ablations, combined) into `out` (default: the
    first folder's report/) and return it with its figures, tables and notes. `formats`: the files
    written per figure (PNG is the one the page shows)."""
    t0 = time.time()
    folders = [Path(f) for f in folders]
    out = Path(out) if out else folders[0] / "report"
    out.mkdir(parents=True, exist_ok=True)
    if "png" not in formats:
        raise ValueError("formats must include png (the page shows the PNGs)")
    b = _Builder(load_report_data(folders), out, log, n_boot, seed, formats)
    summary = Section(
        "Summary",
        "Best configuration per model (chosen by validation AUC, never by test) and its "
        "test metrics; ablation verdicts.",
    )
    sections = [summary]
    missing: list[str] = []
    cands = candidates(b.data, missing)
    for n in missing:
        b.note(n, summary)
    b.report.candidates = cands
    if b.data.has_sweep:  # known from the trial table even where test predictions are missing
        best = b.data.sweep.best_trials().to_dict("records")
        b.table(
            summary, "best_config", "Best configuration per model", best_config_table(best, [r["model"] for r in best])
        )
    elif cands:
        b.table(
            summary,
            "best_config",
            "Best run per model and arm (by validation AUC)",
            best_config_table([c.row for c in cands], [c.label for c in cands]),
        )
    sections.append(_model_comparison(b, summary, cands))
    sections += _sweep_sections(b, top)
    sections.append(_ablation_section(b, summary))
    if images:
        sections.append(_pictures(b, cands, examples, gradcam))
    else:
        sections.append(
            Section("5. Test images and where the model looks", notes=["skipped (images=False, --no-images)"])
        )
    if not b.data.has_sweep and not b.data.has_ablation:
        b.note("nothing to report: none of the folders holds sweep or ablation results", summary)
    b.report.seconds = time.time() - t0
    meta = _meta(b.data, b.report.seconds)
    b.report.html.write_text(render("pneumo-ray report", meta, b.report.notes, sections))
    _write_summary(b.report)
    log(f"wrote {b.report.html} ({len(b.report.figures)} figures, {b.report.seconds:.1f} s)")
    return b.report


def _model_comparison(b: _Builder, summary: Section, cands: list[Candidate]) -> Section:
    s = Section(
        "1. Model comparison on the test set",
        "Each model's best trial by validation AUC (for ablation-only input: each arm's best-validation "
        "seed), its test predictions, and the decision threshold fixed by its loss.",
    )
    if not cands:
        if b.data.has_sweep or b.data.has_ablation:
            b.note(
                "model comparison: no test predictions (predictions.parquet / ablation_predictions.parquet) "
                "for a finished trial",
                s,
            )
        else:
            b.aside(s, "needs test predictions from a sweep or an ablation")
        return s
    metrics, raw = test_metric_table(cands, b.n_boot, b.seed)
    b.table(
        summary,
        "test_metrics",
        f"Test metrics at the decision threshold (95% bootstrap CI over test images, "
        f"{b.n_boot} resamples, stratified by class)",
        metrics,
    )
    for c in cands:
        rec = c.row.get("test_auc")
        if rec is not None and not math.isnan(rec) and abs(rec - raw[c.label]["auc"][0]) > 1e-6:
            b.note(
                f"{c.label}: recorded test_auc {rec:.4f} differs from the AUC of its predictions "
                f"{raw[c.label]['auc'][0]:.4f}",
                s,
            )
    bands = {
        c.label: roc_band(c.labels, c.probs, bootstrap_counts(c.labels, min(b.n_boot, 1000), b.seed)) for c in cands
    }
    b.figure(
        s,
        "roc",
        figs.roc_figure(cands, bands, {k: v["auc"] for k, v in raw.items()}),
        "ROC curves on the test set with a pointwise 95% bootstrap band; the dot is the operating point at the "
        "decision threshold fixed by the loss.",
    )
    b.figure(s, "precision_recall", figs.pr_figure(cands), "Precision–recall on the test set; AP = average precision.")
    b.figure(
        s, "confusion", figs.confusion_figure(cands), "Confusion matrices at the decision threshold (row shares in %)."
    )
    b.figure(
        s,
        "calibration",
        figs.calibration_figure(cands),
        "Reliability curve (10 equal-width bins) and the distribution of predicted probabilities.",
    )
    return s


def _sweep_sections(b: _Builder, top: int) -> list[Section]:
    lc = Section(
        "2. Learning curves",
        f"Per model, the top {top} trials by validation AUC in colour, the others "
        "grey; dashed lines ending in × were stopped early by ASHA.",
    )
    ins = Section(
        "3. Sweep insight", "How Optuna's search went and which hyper-parameters mattered (validation AUC only)."
    )
    if not b.data.has_sweep:
        for s in (lc, ins):
            b.aside(s, "needs a sweep folder (trials.parquet, epochs.parquet)")
        return [lc, ins]
    trials = finished_trials(b.data.sweep.trials)
    failed = (
        b.data.sweep.trials[b.data.sweep.trials["best_val_auc"].isna()]
        if "best_val_auc" in b.data.sweep.trials
        else b.data.sweep.trials
    )
    if len(failed):
        ids = list(failed["trial_id"].astype(str))
        b.note(
            f"{len(failed)} trial(s) without a validation AUC (failed: {', '.join(ids[:10])}"
            f"{', …' if len(ids) > 10 else ''}) are left out",
            ins,
        )
    if trials.empty:
        b.note("the sweep has no finished trial yet: no learning curves or sweep insight", ins)
        return [lc, ins]
    epochs = b.data.sweep.epochs
    if epochs.empty:
        b.note("learning curves: epochs.parquet is missing or empty", lc)
    else:
        b.figure(
            lc,
            "learning_curves",
            figs.learning_curves_figure(trials, epochs, top),
            "Train loss, validation loss and validation AUC by fine-tuning epoch.",
        )
    b.figure(
        ins,
        "optimisation_history",
        figs.history_figure(trials),
        "Validation AUC of each trial in the order the sweep recorded them, and the best so far.",
    )
    from pneumo_ray.report.importance import importance

    sweep_cfg = next((r.get("sweep") for r in b.data.sweep_runs.values() if r.get("sweep")), None)
    imp = importance(trials, sweep_cfg, b.seed)
    b.report.tables["importance"] = imp
    small = sorted(set(imp.loc[imp["n_trials"] < 8, "model"]))
    if small:
        b.note(f"hyper-parameter importance rests on fewer than 8 trials for {', '.join(small)}: indicative only", ins)
    b.figure(
        ins,
        "importance",
        figs.importance_figure(imp),
        "Hyper-parameter importance: fANOVA (Optuna) on a study rebuilt from the trial table, per model; "
        "grey = not varied by the sweep.",
    )
    b.figure(
        ins,
        "params",
        figs.params_figure(trials),
        "Validation AUC against each searched parameter (× = stopped early by ASHA).",
    )
    return [lc, ins]


def _ablation_section(b: _Builder, summary_section: Section) -> Section:
    s = Section(
        "4. Ablations",
        "Each arm against transfer on the same test images (paired bootstrap over images "
        "and seeds), per-arm metrics across seeds, and the leakage audit of the pre-training "
        "images.",
    )
    abl = b.data.ablation
    if not b.data.has_ablation:
        b.aside(s, "needs an ablation folder (ablations.parquet, ablation_summary.parquet)")
        return s
    summ = abl["ablation_summary"]
    if summ.empty:
        summ = _recompute_summary(b, s)
        if summ.empty:
            return s
    v = verdicts(summ)
    b.report.verdicts = v
    if v:
        summary_section.blocks.append(
            ("list", "Ablation verdicts (transfer = pre-trained on the source, fine-tuned on the target)", v)
        )
    arms = arm_table(summ)
    b.report.tables["arms"] = arms
    summary_section.blocks.append(
        (
            "table",
            "Ablation arms: mean [95% CI]; test AUC's interval covers seeds and "
            "test images, the threshold metrics' seeds only",
            arms,
        )
    )
    vs = summ[summ["kind"] == "vs_transfer"].dropna(subset=["auc_diff"]) if "auc_diff" in summ else summ.iloc[0:0]
    if vs.empty:
        b.note(
            "ablations: no arm shares seeds with the transfer arm yet, so no AUC differences (run the transfer "
            "arm and another arm with the same seeds)",
            s,
        )
    else:
        fig = figs.forest_figure(summ)
        b.report.figures["forest"] = fig
        b.report.files += figs.save(fig, b.out / "figures", "forest", b.formats)
        audit = abl["audit_summary"]
        side = [("list", "Verdicts", v)]
        if audit.empty:
            b.note("ablations: audit_summary.parquet missing: no leakage audit numbers", s)
        else:
            side.append(("list", "Leakage audit of the pre-training images", audit_sentences(audit)))
        caption = (
            "AUC difference to transfer with its 95% CI covering seed-to-seed variation and test-image "
            "sampling; p_holm = the primary paired test, Holm-adjusted over the arms of each model."
        )
        s.blocks.append(("row", [("figure", "forest", caption, b.formats), ("stack", side)]))
    if (summ["kind"] == "arm").any():
        b.figure(
            s,
            "arm_metrics",
            figs.arm_bars_figure(summ, abl["ablations"]),
            "Per arm: mean test metric across seeds with its 95% t-interval (clipped to [0, 1]); dots are seeds.",
        )
    at = audit_table(abl["audit_summary"])
    if len(at):
        b.table(
            s,
            "audit",
            "Leakage audit: the images each arm pre-trained on against the target's sets "
            "(shared file name, patient or content)",
            at,
        )
    return s


def _recompute_summary(b: _Builder, s: Section) -> pd.DataFrame:
    abl = b.data.ablation
    if abl["ablations"].empty or abl["ablation_predictions"].empty:
        b.note("ablations: no ablation_summary.parquet and no predictions to recompute it from", s)
        return pd.DataFrame()
    try:
        from pneumo_ray.analysis.verdicts import summarize
    except Exception as e:  # noqa: BLE001 - the summary module pulls in the training stack
        b.note(f"ablations: no ablation_summary.parquet and it cannot be recomputed here ({e})", s)
        return pd.DataFrame()
    b.note(
        "ablations: ablation_summary.parquet missing: recomputed from ablations.parquet and "
        "ablation_predictions.parquet",
        s,
    )
    return summarize(abl["ablations"], abl["ablation_predictions"])


def _pictures(b: _Builder, cands: list[Candidate], examples: int, n_cam: int) -> Section:
    from pneumo_ray.report.images import Unavailable, grid_figure, load_test_images, pick_examples

    s = Section("5. Test images and where the model looks")
    if not cands:
        b.aside(s, "needs a model with test predictions")
        return s
    c = max(cands, key=lambda c: c.row.get("best_val_auc", c.row.get("val_auc", -1)))
    s.intro = (
        f"{c.label} (the best model by validation AUC): the most confident examples of each outcome at "
        f"its decision threshold, and Grad-CAM heat-maps from its checkpoint."
    )
    picked = pick_examples(c, examples)
    try:
        imgs = load_test_images(c, picked)
    except (Unavailable, FileNotFoundError, OSError, ValueError) as e:
        b.note(f"pictures: test images unavailable: {e}", s)
        return s
    b.figure(
        s,
        "test_examples",
        grid_figure(c, picked, imgs),
        "Green frames: correct; red: wrong. p = the model's probability of PNEUMONIA.",
    )
    _gradcam(b, s, c, picked, imgs, n_cam)
    return s


def _gradcam(b: _Builder, s: Section, c: Candidate, picked: dict, imgs: dict, n_cam: int) -> None:
    if n_cam <= 0:
        return
    try:
        from pneumo_ray.report.gradcam import checkpoint_file, explain
        from pneumo_ray.report.images import gradcam_figure
    except ImportError as e:
        b.note(f"Grad-CAM: torch is not available ({e})", s)
        return
    path = checkpoint_file(c.checkpoint)
    if path is None:
        b.note(f"Grad-CAM: the checkpoint of {c.label} is not on this machine ({c.checkpoint or 'not recorded'})", s)
        return
    order = ["TP", "FN", "FP", "TN"]
    chosen, k = [], 0  # round-robin over outcomes: a few of each
    while len(chosen) < n_cam and k < max(len(v) for v in picked.values()):
        chosen += [(o, k) for o in order if k < len(picked[o])][: n_cam - len(chosen)]
        k += 1
    rows = [int(picked[o][i]) for o, i in chosen]
    images = np.stack([imgs[o][i] for o, i in chosen])
    try:
        maps, probs, layer = explain(path, images, c.model)
    except Exception as e:  # noqa: BLE001 - a checkpoint that does not load is reported, not fatal
        b.note(f"Grad-CAM: cannot use {path}: {type(e).__name__}: {e}", s)
        return
    drift = float(np.max(np.abs(probs - c.probs[rows])))
    if drift > 0.02:
        b.note(
            f"Grad-CAM: the checkpoint gives probabilities up to {drift:.3f} away from the recorded ones "
            "(different weights or preprocessing?)",
            s,
        )
    b.figure(
        s,
        "gradcam",
        gradcam_figure(c, rows, images, maps, layer, [o for o, _ in chosen]),
        f"Grad-CAM from {path.name} at layer {layer}: red = where the evidence for the predicted class lies.",
    )


def _meta(data: ReportData, seconds: float) -> list[str]:
    lines = [f"generated {time.strftime('%Y-%m-%d %H:%M')} in {seconds:.1f} s from:"]
    for f in data.folders:
        run = data.sweep_runs.get(f.name) or data.ablation_runs.get(f.name) or {}
        kind = "sweep" if f.name in data.sweep_runs else "ablation" if f.name in data.ablation_runs else "?"
        bits = [f"{f} ({kind}"]
        for k in ("preset", "status"):
            if run.get(k):
                bits.append(f"{k} {run[k]}")
        if run.get("git_commit"):
            bits.append(f"commit {str(run['git_commit'])[:12]}")
        data_root = (run.get("args") or {}).get("data_root", (run.get("settings") or {}).get("data_root"))
        bits.append(f"data {data_root or 'synthetic'}" if run else "no run.json")
        lines.append(", ".join(bits) + ")")
    return lines


def _write_summary(report: Report) -> None:
    """summary.json: the page's tables, verdicts and notes, for scripts."""
    doc = dict(
        notes=report.notes,
        verdicts=report.verdicts,
        tables={k: json.loads(v.to_json(orient="records")) for k, v in report.tables.items()},
        figures=sorted(report.figures),
        seconds=round(report.seconds, 2),
    )
    (report.out / "summary.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False))
