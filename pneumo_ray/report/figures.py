"""The report's figures, one function each, from tables and predictions only. Every function returns
a matplotlib Figure (Agg, no pyplot state); plotted curves carry a gid ("roc:cnn", …) so a test can
read back exactly what was drawn."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FormatStrFormatter, NullFormatter  # noqa: E402

from pneumo_ray.analysis.curves import calibration, confusion, precision_recall  # noqa: E402
from pneumo_ray.analysis.metrics import roc_curve  # noqa: E402
from pneumo_ray.config.search import SEARCH, SEARCHED  # noqa: E402
from pneumo_ray.report.inputs import Candidate  # noqa: E402

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
LOG_PARAMS = {s.field for s in SEARCH if s.log}  # drawn on a log axis, as they are searched


def color(i: int) -> str:
    return COLORS[i % len(COLORS)]


def save(fig: Figure, folder: Path, name: str, formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    """name.png (for the page) and name.svg (vector, for papers)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}.{ext}" for ext in formats]
    for path in paths:  # every figure is laid out (tight_layout) when drawn: no bbox_inches="tight" re-draw
        fig.savefig(path, dpi=110)
    return paths


def roc_figure(cands: list[Candidate], bands: dict, aucs: dict) -> Figure:
    """Test ROC of each candidate, its 95% bootstrap band and its operating point at the
    decision threshold (fixed by the training loss)."""
    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.7", lw=1, ls=":")
    for i, c in enumerate(cands):
        fpr, tpr, _ = roc_curve(c.labels, c.probs)
        grid, lo, hi = bands[c.label]
        ax.fill_between(grid, lo, hi, step="post", color=color(i), alpha=0.15, lw=0)
        a, alo, ahi = aucs[c.label]
        (line,) = ax.plot(fpr, tpr, color=color(i), lw=1.8, label=f"{c.label}: AUC {a:.3f} [{alo:.3f}, {ahi:.3f}]")
        line.set_gid(f"roc:{c.label}")
        pred = c.probs >= c.threshold
        y = c.labels.astype(bool)
        ax.plot(
            [(pred & ~y).sum() / max((~y).sum(), 1)],
            [(pred & y).sum() / max(y.sum(), 1)],
            "o",
            color=color(i),
            mec="k",
            ms=6,
        )
    ax.set(
        xlabel="false-positive rate (1 − specificity)",
        ylabel="true-positive rate (sensitivity)",
        xlim=(0, 1),
        ylim=(0, 1.01),
        title="ROC on the test set (band: 95% bootstrap; ● threshold)",
    )
    ax.legend(loc="lower right", fontsize=8)
    ax.set_aspect("equal")
    fig.tight_layout()
    return fig


def pr_figure(cands: list[Candidate]) -> Figure:
    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    for i, c in enumerate(cands):
        recall, precision, ap = precision_recall(c.labels, c.probs)
        (line,) = ax.plot(recall, precision, color=color(i), lw=1.8, label=f"{c.label}: AP {ap:.3f}")
        line.set_gid(f"pr:{c.label}")
    if cands:
        prev = cands[0].labels.mean()
        ax.axhline(prev, color="0.7", ls=":", lw=1, label=f"prevalence {prev:.2f}")
    ax.set(
        xlabel="recall (sensitivity)",
        ylabel="precision",
        xlim=(0, 1),
        ylim=(0, 1.02),
        title="Precision–recall on the test set",
    )
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return fig


def confusion_figure(cands: list[Candidate]) -> Figure:
    n = max(len(cands), 1)
    fig = Figure(figsize=(3.3 * n, 3.4))
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, c in zip(axes, cands):
        cm = confusion(c.labels, c.probs, c.threshold)
        ax.imshow(cm / cm.sum(axis=1, keepdims=True).clip(1), cmap="Blues", vmin=0, vmax=1)
        for (r, k), v in np.ndenumerate(cm):
            share = v / max(cm[r].sum(), 1)
            ax.text(k, r, f"{v}\n{share:.0%}", ha="center", va="center", color="white" if share > 0.6 else "black")
        ax.set(
            xticks=[0, 1],
            yticks=[0, 1],
            xticklabels=["NORMAL", "PNEUMONIA"],
            yticklabels=["NORMAL", "PNEUMONIA"],
            xlabel="predicted",
            ylabel="true",
            title=f"{c.label}\nthreshold {c.threshold:.3f} (loss rule)",
        )
        ax.images[0].set_gid(f"confusion:{c.label}")
    fig.tight_layout()
    return fig


def calibration_figure(cands: list[Candidate], bins: int = 10) -> Figure:
    fig = Figure(figsize=(5.5, 6))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw=dict(height_ratios=[3, 1]))
    top.plot([0, 1], [0, 1], color="0.7", ls=":", lw=1, label="perfectly calibrated")
    for i, c in enumerate(cands):
        mean_p, frac, _, brier = calibration(c.labels, c.probs, bins)
        (line,) = top.plot(mean_p, frac, "o-", color=color(i), ms=4, label=f"{c.label}: Brier {brier:.3f}")
        line.set_gid(f"calibration:{c.label}")
        bottom.hist(c.probs, bins=bins, range=(0, 1), histtype="step", color=color(i), lw=1.5)
    top.set(
        ylabel="observed fraction PNEUMONIA", xlim=(0, 1), ylim=(-0.02, 1.02), title="Calibration (reliability) on test"
    )
    top.legend(loc="upper left", fontsize=8)
    bottom.set(xlabel="predicted probability of PNEUMONIA", ylabel="images")
    fig.tight_layout()
    return fig


def learning_curves_figure(trials: pd.DataFrame, epochs: pd.DataFrame, top: int = 3) -> Figure:
    """Per model (rows): train loss, validation loss, validation AUC by epoch; the `top` trials by
    validation AUC in colour, the others grey; ASHA-stopped trials dashed and ending in ×."""
    models = sorted(trials["model"].unique())
    fig = Figure(figsize=(13, 3.2 * len(models)))
    axes = fig.subplots(len(models), 3, squeeze=False)
    for r, model in enumerate(models):
        t = trials[trials["model"] == model].sort_values("best_val_auc", ascending=False)
        best = list(t["trial_id"][:top])
        stopped = set(t.loc[t["stop_reason"] == "early_stopped", "trial_id"])
        for tid in list(t["trial_id"][top:]) + best:  # grey first, colours on top
            e = epochs[epochs["trial_id"] == tid].sort_values("epoch")
            if e.empty:
                continue
            shown = tid in best
            kw = dict(
                color=color(best.index(tid)) if shown else "0.75",
                lw=1.8 if shown else 1,
                ls="--" if tid in stopped else "-",
                zorder=3 if shown else 1,
            )
            label = f"{tid}{' (ASHA-stopped)' if tid in stopped else ''}" if shown else None
            for ax, col in zip(axes[r], ("train_loss", "val_loss", "val_auc")):
                if col not in e:
                    continue
                (line,) = ax.plot(e["epoch"], e[col], marker="o", ms=3, label=label, **kw)
                line.set_gid(f"learning:{model}:{tid}:{col}")
                if tid in stopped:
                    ax.plot(e["epoch"].iloc[-1:], e[col].iloc[-1:], "x", color=kw["color"], ms=9, mew=2, zorder=4)
        for ax, title in zip(axes[r], ("train loss", "validation loss", "validation AUC")):
            ax.set(title=f"{model}: {title}", xlabel="epoch")
            ax.xaxis.get_major_locator().set_params(integer=True)
        axes[r][2].legend(fontsize=7, title=f"top {min(top, len(best))} of {len(t)} trials", title_fontsize=7)
    fig.tight_layout()
    return fig


def history_figure(trials: pd.DataFrame) -> Figure:
    """Validation AUC of each trial in the order the sweep recorded them, and the best so far."""
    models = sorted(trials["model"].unique())
    fig = Figure(figsize=(5.5 * len(models), 4))
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    for ax, model in zip(axes, models):
        t = trials[trials["model"] == model].reset_index(drop=True)
        n = np.arange(1, len(t) + 1)
        stopped = (t["stop_reason"] == "early_stopped").to_numpy()
        for m, marker, c, label in ((~stopped, "o", "C0", "completed"), (stopped, "x", "C3", "early stopped (ASHA)")):
            ax.plot(n[m], t["best_val_auc"][m], marker, ls="none", color=c, label=label)
        (line,) = ax.step(n, t["best_val_auc"].cummax(), where="post", color="k", lw=1.2, label="best so far")
        line.set_gid(f"history:{model}")
        ax.set(title=f"{model}: optimisation history", xlabel="trial (in recorded order)", ylabel="validation AUC")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def importance_figure(imp: pd.DataFrame) -> Figure:
    """Horizontal bars per model, one per searched parameter (fixed ones labelled so)."""
    models = sorted(imp["model"].unique())
    fig = Figure(figsize=(5 * len(models), 3))
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    for ax, model in zip(axes, models):
        g = imp[imp["model"] == model].set_index("param").reindex([p for p in SEARCHED if p in set(imp["param"])])
        y = np.arange(len(g))
        bars = ax.barh(y, g["importance"].fillna(0), color=[("0.8" if f else "C0") for f in g["fixed"]])
        for bar, param in zip(bars, g.index):
            bar.set_gid(f"importance:{model}:{param}")
        ax.set_yticks(y, [f"{p} (fixed)" if f else p for p, f in zip(g.index, g["fixed"])])
        ax.invert_yaxis()
        ax.set(
            xlim=(0, 1),
            xlabel="importance (share of variance)",
            title=f"{model}: {g['method'].iloc[0]}, {int(g['n_trials'].iloc[0])} trials",
        )
        ax.title.set_fontsize(9)
    fig.tight_layout()
    return fig


def params_figure(trials: pd.DataFrame) -> Figure:
    """Validation AUC against each searched parameter, one colour per model (× = ASHA-stopped)."""
    params = [p for p in SEARCHED if p in trials]
    fig = Figure(figsize=(3.4 * len(params), 3.3))
    axes = fig.subplots(1, len(params), squeeze=False, sharey=True)[0]
    for ax, p in zip(axes, params):
        for i, (model, g) in enumerate(sorted(trials.groupby("model"))):
            stopped = g["stop_reason"] == "early_stopped"
            ax.plot(g.loc[~stopped, p], g.loc[~stopped, "best_val_auc"], "o", ls="none", color=color(i), label=model)
            ax.plot(g.loc[stopped, p], g.loc[stopped, "best_val_auc"], "x", ls="none", color=color(i))
        values = trials[p].dropna()
        if values.nunique() <= 1:  # not searched: one tick, said so
            ax.set_xticks(values.unique()[:1], [f"{v:.3g}" for v in values.unique()[:1]])
            ax.set_title(f"{p} (fixed)")
        else:
            if p in LOG_PARAMS and (values > 0).all():
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())
                ax.set_xticks(np.geomspace(values.min(), values.max(), 3))
            ax.xaxis.set_major_formatter(FormatStrFormatter("%.3g"))
            ax.set_title(p)
        ax.set_xlabel(p)
    axes[0].set_ylabel("validation AUC")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def forest_figure(summary: pd.DataFrame) -> Figure:
    """AUC difference (arm − transfer) with its 95% CI (seeds + test images), one row per (model, arm),
    annotated with the Holm-adjusted p-value that the verdict uses."""
    vs = summary[(summary["kind"] == "vs_transfer")].dropna(subset=["auc_diff"]).sort_values(["model", "arm"])
    fig = Figure(figsize=(7, 1.0 + 0.5 * max(len(vs), 1)))
    ax = fig.add_subplot()
    y = np.arange(len(vs))[::-1]
    d = vs["auc_diff"].to_numpy(float)
    err = np.abs(np.stack([d - vs["auc_diff_ci_low"].to_numpy(float), vs["auc_diff_ci_high"].to_numpy(float) - d]))
    cols = [color(sorted(vs["model"].unique()).index(m)) for m in vs["model"]]
    for yi, di, e0, e1, c in zip(y, d, err[0], err[1], cols):
        ax.errorbar(di, yi, xerr=[[e0], [e1]], fmt="s", color=c, capsize=4, ms=6)
    pts = ax.plot(d, y, ls="none")[0]
    pts.set_gid("forest")
    ax.axvline(0, color="0.5", lw=1)
    ax.set_yticks(y, [f"{m}: {a}" for m, a in zip(vs["model"], vs["arm"])])
    for yi, p in zip(y, vs["p_holm"] if "p_holm" in vs else [math.nan] * len(vs)):
        ax.annotate(f"p_holm={p:.3f}", (1.01, yi), xycoords=("axes fraction", "data"), va="center", fontsize=8)
    ax.set(
        xlabel="ΔAUC vs transfer (95% CI: seeds + test images)  ← transfer better | arm better →",
        title="Ablations: test AUC difference to the transfer arm",
    )
    ax.set_ylim(-0.7, len(vs) - 0.3)
    fig.tight_layout()
    return fig


def arm_bars_figure(summary: pd.DataFrame, ablations: pd.DataFrame | None = None) -> Figure:
    """Per model: mean test metric per arm with its 95% CI across seeds; dots are the seeds."""
    arms = summary[summary["kind"] == "arm"]
    models = sorted(arms["model"].unique())
    metrics = ["auc", "accuracy", "balanced_accuracy", "sensitivity", "specificity"]
    fig = Figure(figsize=(7.5 * len(models), 3.8))
    axes = fig.subplots(1, len(models), squeeze=False, sharey=True)[0]
    for ax, model in zip(axes, models):
        g = arms[arms["model"] == model].reset_index(drop=True)
        width = 0.8 / max(len(g), 1)
        x = np.arange(len(metrics))
        for i, r in g.iterrows():
            mean = np.array([r[f"test_{m}_mean"] for m in metrics], float)
            lo = np.clip([r[f"test_{m}_ci_low"] for m in metrics], 0, 1)
            hi = np.clip([r[f"test_{m}_ci_high"] for m in metrics], 0, 1)
            yerr = np.nan_to_num(np.abs(np.stack([mean - lo, hi - mean])))
            xs = x - 0.4 + width * (i + 0.5)
            bars = ax.bar(
                xs,
                mean,
                width * 0.9,
                yerr=yerr,
                capsize=3,
                color=color(i),
                alpha=0.8,
                label=f"{r['arm']} (n={int(r['n_seeds'])})",
            )
            for bar, m in zip(bars, metrics):
                bar.set_gid(f"arm:{model}:{r['arm']}:{m}")
            if ablations is not None and len(ablations):
                s = ablations[(ablations["model"] == model) & (ablations["arm"] == r["arm"])]
                for j, m in enumerate(metrics):
                    if f"test_{m}" in s:  # ablations written before balanced accuracy was recorded lack it
                        ax.plot(np.full(len(s), xs[j]), s[f"test_{m}"], ".", color="k", ms=4)
        ax.set_xticks(x, ["AUC", "accuracy", "balanced acc.", "sensitivity", "specificity"])
        ax.set(ylim=(0, 1.05), title=f"{model}: test metrics per arm (mean, 95% CI across seeds)")
        ax.title.set_fontsize(10)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig
