"""Pictures of the data and the model: the test images behind a model's predictions (decoded from
the run's data root, or the synthetic phantoms when it had none), a grid of true/false
positives/negatives, and Grad-CAM overlays from the model's checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from pneumo_ray.analysis.curves import outcomes
from pneumo_ray.report.inputs import Candidate, data_settings

OUTCOMES = (("TP", "true positive"), ("FN", "false negative"), ("FP", "false positive"), ("TN", "true negative"))
REPO = Path(__file__).resolve().parents[2]


class Unavailable(Exception):
    """Why pictures cannot be made (the message goes into the report)."""


def _resolve(root: str) -> Path:
    """A recorded data root; a relative one is tried from here and from the repository root."""
    for p in (Path(root).expanduser(), REPO / root):
        if p.is_dir():
            return p.resolve()
    raise Unavailable(f"the run's data_root {root!r} is not on this machine")


def load_test_images(
    c: Candidate, picked: dict[str, np.ndarray], cache_dir: str | os.PathLike | None = None
) -> dict[str, np.ndarray]:
    """{outcome: uint8 [len(rows), S, S]}: the test images behind the candidate's predictions at
    `picked` rows, at the run's image size, matched by path (else by file name)."""
    from pneumo_ray.data.study_data import synthetic_set

    s = data_settings(c.run, c.row)
    if not s["image_size"]:
        raise Unavailable("the image size is not recorded (no usable run.json, no image_size column)")
    cache = cache_dir or (
        s["cache_dir"] if s["cache_dir"] and os.access(Path(s["cache_dir"]).parent, os.W_OK) else None
    )
    if s["data_root"] is None:
        if not s["known"]:
            raise Unavailable("run.json does not record the data_root (missing or damaged): the test data are unknown")
        test = synthetic_set("target_test", s["image_size"], cache)
    else:
        from pneumo_ray.data import cache as decode
        from pneumo_ray.data import sources
        from pneumo_ray.data.study_data import ImageSet

        scan = sources.kermany_manifest(_resolve(s["data_root"]))
        dec = decode.decoded(
            scan.manifest[scan.manifest.split == "test"], s["image_size"], cache, label="target-test", quiet=True
        )
        test = ImageSet(dec.images, np.arange(len(dec.manifest)), dec.manifest, "test")
    for key, values in (("path", c.paths), ("name", c.names)):
        pos = {v: i for i, v in enumerate(test.manifest[key].astype(str))}
        hits = {o: [pos.get(v) for v in values[rows]] for o, rows in picked.items()}
        if all(h is not None for found in hits.values() for h in found):
            return {o: test.batch(np.asarray(found, dtype=np.int64)) for o, found in hits.items()}
    raise Unavailable(
        f"the predicted images are not in the test set at {s['data_root'] or 'synthetic'} "
        "(the data changed since the run)"
    )


def pick_examples(c: Candidate, per_outcome: int = 4) -> dict[str, np.ndarray]:
    """Rows per outcome: the most confident of each (for errors: the most confidently wrong)."""
    out = outcomes(c.labels, c.probs, c.threshold)
    picked = {}
    for o, _ in OUTCOMES:
        rows = np.flatnonzero(out == o)
        conf = c.probs[rows] if o in ("TP", "FP") else -c.probs[rows]
        picked[o] = rows[np.argsort(-conf, kind="stable")[:per_outcome]]
    return picked


def grid_figure(c: Candidate, picked: dict[str, np.ndarray], images: dict[str, np.ndarray]) -> Figure:
    """Rows TP, FN, FP, TN; each image titled with P(PNEUMONIA) and its true label."""
    cols = max(1, max(len(v) for v in picked.values()))
    fig = Figure(figsize=(1.9 * cols + 1.2, 2.2 * len(OUTCOMES)))
    axes = fig.subplots(len(OUTCOMES), cols, squeeze=False)
    for r, (o, words) in enumerate(OUTCOMES):
        for k in range(cols):
            ax = axes[r][k]
            ax.set_xticks([])
            ax.set_yticks([])
            if k >= len(picked[o]):
                ax.set_axis_off()
                continue
            row = picked[o][k]
            ax.imshow(images[o][k], cmap="gray", vmin=0, vmax=255)
            truth = "PNEUMONIA" if c.labels[row] else "NORMAL"
            ax.set_title(f"p={c.probs[row]:.2f} · {truth}", fontsize=8)
            for sp in ax.spines.values():
                sp.set_color("#2ca02c" if o[0] == "T" else "#d62728")
                sp.set_linewidth(2.5)
        axes[r][0].set_ylabel(f"{words}\n({o})", fontsize=9)
        if not len(picked[o]):
            axes[r][0].set_axis_on()
            axes[r][0].text(0.5, 0.5, f"no {words}s", ha="center", va="center", transform=axes[r][0].transAxes)
    fig.suptitle(f"{c.label}: test images, P(PNEUMONIA) and label at threshold {c.threshold:.3f}", fontsize=10)
    fig.tight_layout()
    return fig


def gradcam_figure(
    c: Candidate, rows: list[int], images: np.ndarray, maps: np.ndarray, layer: str, kinds: list[str]
) -> Figure:
    """Top: the images; bottom: the Grad-CAM heat-map over each."""
    n = len(rows)
    fig = Figure(figsize=(2.2 * n + 0.5, 4.8))
    axes = fig.subplots(2, n, squeeze=False)
    for k, (row, kind) in enumerate(zip(rows, kinds)):
        truth = "PNEUMONIA" if c.labels[row] else "NORMAL"
        axes[0][k].imshow(images[k], cmap="gray", vmin=0, vmax=255)
        axes[0][k].set_title(f"{kind} · p={c.probs[row]:.2f}\ntrue {truth}", fontsize=8)
        axes[1][k].imshow(images[k], cmap="gray", vmin=0, vmax=255)
        im = axes[1][k].imshow(maps[k], cmap="jet", alpha=0.45, vmin=0, vmax=1)
        im.set_gid(f"gradcam:{k}")
        for ax in (axes[0][k], axes[1][k]):
            ax.set_axis_off()
    fig.suptitle(f"{c.label}: Grad-CAM at {layer} (evidence for the predicted class)", fontsize=10)
    fig.tight_layout()
    return fig
