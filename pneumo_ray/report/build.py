"""build_report: result folders → <first folder>/report/ (report.html, figures/*.png + *.svg,
summary.json). Reads Parquet and run.json only; no training, no Ray. Each section makes what its
inputs allow and says, printed and on the page, what it could not make and why: a gap as a note, a
damaged file (or values a part cannot use) as a warning and a "left out: …" note in each section that
needed it. A path that is no results folder, results with nothing to show, or an output folder that
cannot be written raise UserError before anything is written."""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pneumo_ray.analysis.curves import bootstrap_counts, roc_band
from pneumo_ray.config.errors import UserError
from pneumo_ray.report import figures as figs
from pneumo_ray.report.html import Section, render
from pneumo_ray.report.inputs import (
    ABLATION_TABLES,
    Candidate,
    ReportData,
    candidates,
    finished_trials,
    folder_of,
    load_report_data,
    nothing_to_report,
)
from pneumo_ray.report.tables import (
    arm_table,
    audit_sentences,
    audit_table,
    best_config_table,
    ensemble_table,
    provenance_table,
    test_metric_table,
    verdicts,
)
from pneumo_ray.storage import provenance

# What pandas, numpy, scikit-learn and matplotlib raise on values that a damaged or partial table holds
# (a missing column, text where numbers belong, NaN, an empty group): the part is left out with a
# warning. Any other exception is a bug and keeps its traceback (as these do with strict=True).
DATA_ERRORS = (ValueError, KeyError, TypeError, IndexError)


@dataclass
class Report:
    out: Path
    html: Path
    figures: dict = field(default_factory=dict)  # name -> matplotlib Figure, as drawn
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # damaged inputs and the parts left out for them
    tables: dict = field(default_factory=dict)  # name -> DataFrame shown on the page
    verdicts: list[str] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    seconds: float = 0.0


def _stderr_warning(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr)


class _Builder:
    def __init__(self, data: ReportData, out: Path, log, warn, n_boot: int, seed: int, formats, strict: bool):
        self.data, self.out, self.log, self.warn, self.n_boot, self.seed = data, out, log, warn, n_boot, seed
        self.formats, self.strict = tuple(formats), strict
        self.report = Report(out, out / "report.html")
        for n in data.notes:
            self.note(n)
        for d in data.damaged:
            self.warning(str(d))

    def note(self, text: str, section: Section | None = None) -> None:
        """A gap: printed, listed at the top of the page and, given a section, in it."""
        self.report.notes.append(text)
        if section is not None:
            section.notes.append(text)
        self.log(f"note: {text}")

    def warning(self, text: str, section: Section | None = None) -> None:
        """Something left out for a damaged input: one warning line, and "left out: …" at the top of the
        page and, given a section, in it."""
        self.report.warnings.append(text)
        self.report.notes.append(f"left out: {text}")
        if section is not None:
            section.notes.append(f"left out: {text}")
        self.warn(text)

    @staticmethod
    def aside(section: Section, text: str) -> None:
        """A gap already reported at the top (e.g. no sweep folder), repeated only in its section."""
        section.notes.append(text)

    def left_out(self, section: Section, tables: Iterable[str], folder: str | None = None) -> bool:
        """Repeat in `section` the warning of each damaged file among `tables`; True if there was one."""
        hits = self.data.damaged_in(tables, folder)
        for d in hits:
            self.aside(section, f"left out: {d}")
        return bool(hits)

    def sources(self, tables: Iterable[str]) -> str:
        files = [f / f"{t}.parquet" for t in tables for f in self.data.folders if (f / f"{t}.parquet").exists()]
        return ", ".join(map(str, files)) or "its input tables"

    def attempt(self, section: Section, what: str, tables: Sequence[str], make: Callable[[], object]):
        """make(), or None with a warning if the values of `tables` make it fail (DATA_ERRORS)."""
        try:
            return make()
        except DATA_ERRORS as e:
            if self.strict:
                raise
            msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
            self.warning(
                f"{what}: cannot be made from {self.sources(tables)} ({type(e).__name__}{': ' + msg if msg else ''}); "
                "the table holds values it cannot use (damaged, edited or from another version): rerun the step "
                "that writes it or restore it from a copy",
                section,
            )
            return None

    def draw(self, section: Section, name: str, make: Callable[[], object], tables: Sequence[str]):
        """Draw and save figure `name` (None, with a warning, if its data make it fail)."""

        def drawn():
            fig = make()
            self.report.files += figs.save(fig, self.out / "figures", name, self.formats)
            return fig

        fig = self.attempt(section, f"the {name.replace('_', ' ')} figure", tables, drawn)
        if fig is not None:
            self.report.figures[name] = fig
        return fig

    def figure(self, section: Section, name: str, make: Callable[[], object], caption: str, tables: Sequence[str]):
        if self.draw(section, name, make, tables) is not None:
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
    warn: Callable[[str], object] | None = _stderr_warning,
    strict: bool = False,
) -> Report:
    """Write the report of `folders` (sweeps and/or ablations, combined) into `out` (default: the
    first folder's report/) and return it with its figures, tables and notes. `formats`: the files
    written per figure (PNG is the one the page shows). `warn` gets one line per damaged input (the
    parts it leaves out are said on the page); `strict`: raise instead of leaving a part out whose data
    make it fail. UserError (nothing written) for a path that is no results folder, results with
    nothing to show, or an `out` that cannot be written."""
    t0 = time.time()
    if "png" not in formats:
        raise ValueError("formats must include png (the page shows the PNGs)")
    folders = [Path(f) for f in folders]
    data = load_report_data(folders)
    problem = nothing_to_report(data)
    if problem:
        raise UserError(problem)
    out = Path(out) if out else folders[0] / "report"
    _prepare_output(out)
    log = log or (lambda _: None)
    b = _Builder(data, out, log, warn or (lambda _: None), n_boot, seed, formats, strict)
    summary = Section(
        "Summary",
        "Best configuration per model (chosen by validation AUC, never by test) and its "
        "test metrics; ablation verdicts.",
    )
    sections = [summary]
    missing: list[str] = []
    problems: list[str] = []
    cands = b.attempt(
        summary,
        "the best model per sweep or ablation arm",
        ("trials", "predictions", "ablations", "ablation_predictions"),
        lambda: candidates(b.data, missing, problems),
    )
    cands = cands or []
    for n in missing:
        b.note(n, summary)
    b.report.candidates = cands
    if b.data.has_sweep:  # known from the trial table even where test predictions are missing
        best = b.attempt(summary, "the best configurations", ("trials",), lambda: b.data.sweep.best_trials())
        if best is not None:
            rows = best.to_dict("records")
            b.table(
                summary,
                "best_config",
                "Best configuration per model",
                best_config_table(rows, [r["model"] for r in rows]),
            )
    elif cands:
        b.table(
            summary,
            "best_config",
            "Best run per model and arm (by validation AUC)",
            best_config_table([c.row for c in cands], [c.label for c in cands]),
        )
    _provenance(b, summary)
    comparison = _model_comparison(b, summary, cands)
    _ensembles(b, summary)
    for text in problems:
        b.warning(text, comparison)
    sections.append(comparison)
    sections += _sweep_sections(b, top)
    sections.append(_ablation_section(b, summary))
    if images:
        sections.append(_pictures(b, cands, examples, gradcam))
    else:
        sections.append(
            Section("5. Test images and where the model looks", notes=["skipped (images=False, --no-images)"])
        )
    b.report.seconds = time.time() - t0
    meta = _meta(b.data, b.report.seconds)
    b.report.html.write_text(render("pneumo-ray report", meta, b.report.notes, sections))
    _write_summary(b.report)
    log(
        f"wrote {b.report.html} ({len(b.report.figures)} figures"
        + (f", {len(b.report.warnings)} part(s) left out" if b.report.warnings else "")
        + f", {b.report.seconds:.1f} s)"
    )
    return b.report


def _prepare_output(out: Path) -> None:
    """Create `out` and out/figures, and check that a file can be written there; UserError if not."""
    try:
        (out / "figures").mkdir(parents=True, exist_ok=True)
        for folder in (out, out / "figures"):
            with tempfile.TemporaryFile(dir=folder):
                pass
    except OSError as e:
        why = "a file, not a folder" if out.is_file() else e.strerror or str(e)
        raise UserError(
            f"{out}: cannot write the report there ({why}); choose a folder you can write to "
            "(python -m study.report … --out FOLDER)"
        ) from None


def _provenance(b: _Builder, summary: Section) -> None:
    """What made the rows (code, versions, device, threads, data, pre-training), per table, and a note
    for each condition in which the rows of one table differ."""
    tables = {
        "sweep trials": b.data.sweep.trials if b.data.has_sweep else None,
        "ablation seeds": b.data.ablation["ablations"],
    }
    table = b.attempt(summary, "the provenance table", ("trials", "ablations"), lambda: provenance_table(tables))
    if table is None or table.empty:
        return
    b.table(summary, "provenance", "What made these results (the provenance columns of each table)", table)
    for name, t in tables.items():
        if t is None:
            continue
        for line in provenance.differing(t, ["arm", "model", "seed"] if name.startswith("ablation") else ["trial_id"]):
            b.note(f"{name}: {line}", summary)


def _model_comparison(b: _Builder, summary: Section, cands: list[Candidate]) -> Section:
    s = Section(
        "1. Model comparison on the test set",
        "Each model's best trial by validation AUC (for ablation-only input: each arm's best-validation "
        "seed), its test predictions, and the decision threshold fixed by its loss.",
    )
    tables = ("trials", "predictions") if b.data.has_sweep else ("ablations", "ablation_predictions")
    if not cands:
        if b.left_out(s, ("trials", "predictions", "ablations", "ablation_predictions")):
            return s
        if b.data.has_sweep or b.data.has_ablation:
            b.note(
                "model comparison: no test predictions (predictions.parquet / ablation_predictions.parquet) "
                "for a finished trial",
                s,
            )
        else:
            b.aside(s, "needs test predictions from a sweep or an ablation")
        return s
    b.left_out(s, ("trials", "predictions", *tables))  # a damaged sweep's models are missing here

    def metrics_and_bands():
        metrics, raw = test_metric_table(cands, b.n_boot, b.seed)
        counts = {c.label: bootstrap_counts(c.labels, min(b.n_boot, 1000), b.seed) for c in cands}
        bands = {c.label: roc_band(c.labels, c.probs, counts[c.label]) for c in cands}
        return metrics, raw, bands

    computed = b.attempt(s, "the test metrics and ROC bands", tables, metrics_and_bands)
    if computed is None:
        return s
    metrics, raw, bands = computed
    b.table(
        summary,
        "test_metrics",
        f"Test metrics at the decision threshold (95% bootstrap CI over test images, "
        f"{b.n_boot} resamples, stratified by class)",
        metrics,
    )
    for c in cands:
        rec = c.row.get("test_auc")
        if isinstance(rec, float) and not math.isnan(rec) and abs(rec - raw[c.label]["auc"][0]) > 1e-6:
            b.note(
                f"{c.label}: recorded test_auc {rec:.4f} differs from the AUC of its predictions "
                f"{raw[c.label]['auc'][0]:.4f}",
                s,
            )
    b.figure(
        s,
        "roc",
        lambda: figs.roc_figure(cands, bands, {k: v["auc"] for k, v in raw.items()}),
        "ROC curves on the test set with a pointwise 95% bootstrap band; the dot is the operating point at the "
        "decision threshold fixed by the loss.",
        tables,
    )
    b.figure(
        s,
        "precision_recall",
        lambda: figs.pr_figure(cands),
        "Precision–recall on the test set; AP = average precision.",
        tables,
    )
    b.figure(
        s,
        "confusion",
        lambda: figs.confusion_figure(cands),
        "Confusion matrices at the decision threshold (row shares in %).",
        tables,
    )
    b.figure(
        s,
        "calibration",
        lambda: figs.calibration_figure(cands),
        "Reliability curve (10 equal-width bins) and the distribution of predicted probabilities.",
        tables,
    )
    return s


def _ensembles(b: _Builder, summary: Section) -> None:
    """The ensembles chosen on validation beside the best single model (ensemble.parquet)."""
    ens = b.data.ensembles.get("ensemble", pd.DataFrame())
    if ens.empty:
        return
    table = b.attempt(summary, "the ensemble table", ("ensemble",), lambda: ensemble_table(ens))
    if table is not None:
        b.table(
            summary,
            "ensembles",
            "Ensembles chosen on validation (members and K by validation AUC only; mean of the members' "
            "logit(p) − logit(threshold), PNEUMONIA at ≥ 0) beside the best single model by validation AUC; "
            "test metrics [95% bootstrap CI over test images]; DeLong's paired test compares these two trained "
            "models, not ensembling in general",
            table,
        )


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
            if not b.left_out(s, ("trials",)):
                b.aside(s, "needs a sweep folder (trials.parquet, epochs.parquet)")
        return [lc, ins]
    trials = finished_trials(b.data.sweep.trials)
    failed = b.data.sweep.trials[b.data.sweep.trials["best_val_auc"].isna()]
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
        if not b.left_out(lc, ("epochs",)):
            b.note("learning curves: epochs.parquet is missing or empty", lc)
    else:
        b.figure(
            lc,
            "learning_curves",
            lambda: figs.learning_curves_figure(trials, epochs, top),
            "Train loss, validation loss and validation AUC by fine-tuning epoch.",
            ("trials", "epochs"),
        )
    b.figure(
        ins,
        "optimisation_history",
        lambda: figs.history_figure(trials),
        "Validation AUC of each trial in the order the sweep recorded them, and the best so far.",
        ("trials",),
    )
    from pneumo_ray.report.importance import importance

    sweep_cfg = next((r.get("sweep") for r in b.data.sweep_runs.values() if r.get("sweep")), None)
    imp = b.attempt(ins, "the hyper-parameter importance", ("trials",), lambda: importance(trials, sweep_cfg, b.seed))
    if imp is not None:
        b.report.tables["importance"] = imp
        small = sorted(set(imp.loc[imp["n_trials"] < 8, "model"]))
        if small:
            b.note(
                f"hyper-parameter importance rests on fewer than 8 trials for {', '.join(small)}: indicative only", ins
            )
        b.figure(
            ins,
            "importance",
            lambda: figs.importance_figure(imp),
            "Hyper-parameter importance: fANOVA (Optuna) on a study rebuilt from the trial table, per model; "
            "grey = not varied by the sweep.",
            ("trials",),
        )
    b.figure(
        ins,
        "params",
        lambda: figs.params_figure(trials),
        "Validation AUC against each searched parameter (× = stopped early by ASHA).",
        ("trials",),
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
        if not b.left_out(s, ABLATION_TABLES):
            b.aside(s, "needs an ablation folder (ablations.parquet, ablation_summary.parquet)")
        return s
    b.left_out(s, ABLATION_TABLES)
    summ = abl["ablation_summary"]
    if summ.empty:
        summ = _recompute_summary(b, s)
        if summ.empty:
            return s
    summary_tables = ("ablation_summary",) if len(abl["ablation_summary"]) else ("ablations", "ablation_predictions")
    v = b.attempt(s, "the ablation verdicts", summary_tables, lambda: verdicts(summ)) or []
    b.report.verdicts = v
    if v:
        summary_section.blocks.append(
            ("list", "Ablation verdicts (transfer = pre-trained on the source, fine-tuned on the target)", v)
        )
    arms = b.attempt(s, "the ablation arms table", summary_tables, lambda: arm_table(summ))
    if arms is not None:
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
    elif b.draw(s, "forest", lambda: figs.forest_figure(summ), summary_tables) is not None:
        audit = abl["audit_summary"]
        side = [("list", "Verdicts", v)]
        if audit.empty:
            if not b.data.damaged_in(("audit_summary",)):
                b.note("ablations: audit_summary.parquet missing: no leakage audit numbers", s)
        else:
            sentences = b.attempt(s, "the leakage audit", ("audit_summary",), lambda: audit_sentences(audit))
            if sentences:
                side.append(("list", "Leakage audit of the pre-training images", sentences))
        caption = (
            "AUC difference to transfer with its 95% CI covering seed-to-seed variation and test-image "
            "sampling; p_holm = the primary paired test, Holm-adjusted over the arms of each model."
        )
        s.blocks.append(("row", [("figure", "forest", caption, b.formats), ("stack", side)]))
    if (summ["kind"] == "arm").any():
        b.figure(
            s,
            "arm_metrics",
            lambda: figs.arm_bars_figure(summ, abl["ablations"]),
            "Per arm: mean test metric across seeds with its 95% t-interval (clipped to [0, 1]); dots are seeds.",
            (*summary_tables, "ablations"),
        )
    _seed_plan(b, s)
    at = b.attempt(s, "the leakage audit table", ("audit_summary",), lambda: audit_table(abl["audit_summary"]))
    if at is not None and len(at):
        b.table(
            s,
            "audit",
            "Leakage audit: the images each arm pre-trained on against the target's sets "
            "(shared file name, patient or content)",
            at,
        )
    return s


def _seed_plan(b: _Builder, s: Section) -> None:
    """The table of `study.ablate --plan`: the power of the primary test for 3-20 seeds and the seeds
    needed for 80 % power at ΔAUC 0.01, from the variance measured in the seeds run."""
    from pneumo_ray.analysis.plan import DEFAULT_DELTA, plan_lines, plan_table, seed_plans

    abl = b.data.ablation
    tables = ("ablations", "ablation_predictions")
    plans = b.attempt(s, "the seed plan", tables, lambda: seed_plans(abl["ablations"], abl["ablation_predictions"]))
    if not plans:
        return
    b.table(
        s,
        "seed_plan",
        "How many seeds: power of the primary test (α = 0.05) if the true ΔAUC were each column's, from the "
        "variance measured in the seeds run (python -m study.ablate --plan --name … prints the same)",
        plan_table(plans),
    )
    s.blocks.append(
        (
            "list",
            f"Seeds needed for 80 % power at ΔAUC {DEFAULT_DELTA:g}",
            [x for p in plans for x in (p.title, *plan_lines(p))],
        )
    )


def _recompute_summary(b: _Builder, s: Section) -> pd.DataFrame:
    abl = b.data.ablation
    if abl["ablations"].empty or abl["ablation_predictions"].empty:
        if not b.data.damaged_in(ABLATION_TABLES):  # else the warnings said it
            b.note("ablations: no ablation_summary.parquet and no predictions to recompute it from", s)
        return pd.DataFrame()
    try:
        from pneumo_ray.analysis.verdicts import summarize
    except Exception as e:  # noqa: BLE001 - the summary module pulls in the training stack
        b.note(f"ablations: no ablation_summary.parquet and it cannot be recomputed here ({e})", s)
        return pd.DataFrame()
    damaged = bool(b.data.damaged_in(("ablation_summary",)))
    b.note(
        f"ablations: ablation_summary.parquet {'damaged' if damaged else 'missing'}: recomputed from "
        "ablations.parquet and ablation_predictions.parquet",
        s,
    )
    summ = b.attempt(
        s,
        "the ablation summary",
        ("ablations", "ablation_predictions"),
        lambda: summarize(abl["ablations"], abl["ablation_predictions"]),
    )
    return pd.DataFrame() if summ is None else summ


def _pictures(b: _Builder, cands: list[Candidate], examples: int, n_cam: int) -> Section:
    from pneumo_ray.report.images import Unavailable, grid_figure, load_test_images, pick_examples

    s = Section("5. Test images and where the model looks")
    cands = [c for c in cands if not c.ensemble]  # an ensemble has no one checkpoint to explain
    if not cands:
        b.aside(s, "needs a model with test predictions")
        return s
    c = max(cands, key=lambda c: c.row.get("best_val_auc", c.row.get("val_auc", -1)))
    s.intro = (
        f"{c.label} (the best model by validation AUC): the most confident examples of each outcome at "
        f"its decision threshold, and Grad-CAM heat-maps from its checkpoint."
    )
    if b.left_out(s, ("run",), folder_of(c.row)):  # where the test images are is unknown
        return s
    picked = pick_examples(c, examples)
    try:
        imgs = load_test_images(c, picked)
    except (Unavailable, FileNotFoundError, OSError, ValueError) as e:
        b.note(f"pictures: test images unavailable: {e}", s)
        return s
    preds = ("predictions",) if "trial_id" in c.row else ("ablation_predictions",)
    b.figure(
        s,
        "test_examples",
        lambda: grid_figure(c, picked, imgs),
        "Green frames: correct; red: wrong. p = the model's probability of PNEUMONIA.",
        preds,
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
        lambda: gradcam_figure(c, rows, images, maps, layer, [o for o, _ in chosen]),
        f"Grad-CAM from {path.name} at layer {layer}: red = where the evidence for the predicted class lies.",
        (),
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
        if data.damaged_in(("run",), f.name):
            bits.append("run.json damaged")
        else:
            bits.append(f"data {data_root or 'synthetic'}" if run else "no run.json")
        lines.append(", ".join(bits) + ")")
    return lines


def _write_summary(report: Report) -> None:
    """summary.json: the page's tables, verdicts, notes and warnings, for scripts."""
    doc = dict(
        notes=report.notes,
        warnings=report.warnings,
        verdicts=report.verdicts,
        tables={k: json.loads(v.to_json(orient="records")) for k, v in report.tables.items()},
        figures=sorted(report.figures),
        seconds=round(report.seconds, 2),
    )
    (report.out / "summary.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False))
