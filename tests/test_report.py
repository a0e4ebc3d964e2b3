"""study.report: figures checked against the data they were drawn from (not pixels), the HTML
against its files, partial inputs against their messages. Small fixture tables, no Ray."""

from __future__ import annotations

import html as html_lib
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pneumo_ray.analysis.metrics import binary_metrics, roc_curve
from pneumo_ray.analysis.verdicts import summarize
from pneumo_ray.config.search import SEARCHED
from pneumo_ray.report.build import build_report
from pneumo_ray.report.tables import verdict

SIZE, N_TEST = 32, 120
PATHS = [f"synthetic://target_test/{i:05d}" for i in range(N_TEST)]


def _labels():
    return (np.arange(N_TEST) % 3 != 0).astype(int)  # 80 PNEUMONIA, 40 NORMAL


def _probs(rng, skill: float):
    y = _labels()
    return 1 / (1 + np.exp(-(skill * (y - 0.5) * 4 + rng.normal(0, 1, N_TEST))))


def _preds(probs, threshold, **ids):
    return pd.DataFrame(
        dict(
            **ids,
            path=PATHS,
            name=[p.split("/")[-1] + ".png" for p in PATHS],
            label=_labels(),
            probability=probs,
            prediction=(probs >= threshold).astype(int),
        )
    )


def _checkpoint(folder: Path) -> Path:
    """A tiny randomly initialised ShallowCNN saved like a sweep trial's Ray checkpoint directory."""
    import torch

    from pneumo_ray.train.checkpoints import save_weights
    from pneumo_ray.train.models import build_model

    torch.manual_seed(0)
    model = build_model("cnn")
    save_weights(
        folder / "best.safetensors",
        model.state_dict(),
        dict(config=dict(model="cnn", image_size=SIZE), threshold=0.5, normalize=dict(mean=0.4, std=0.2)),
    )
    return folder


def make_sweep(root: Path, cache_dir: Path, n_trials: int = 5, checkpoint: bool = True) -> Path:
    """trials/epochs/predictions.parquet + run.json as study.sweep writes them (2 models)."""
    out = root / "sweep"
    out.mkdir(parents=True)
    rng = np.random.default_rng(0)
    trials, epochs, preds = [], [], []
    for model in ("cnn", "densenet"):
        for k in range(n_trials):
            tid = f"{model[:3]}{k:05d}"
            stopped = k % 2 == 1
            n_ep = 2 if stopped else 4
            val = 0.70 + 0.05 * k + (0.02 if model == "cnn" else 0)
            probs = _probs(rng, 0.5 + 0.2 * k)
            thr = float(np.median(probs))
            m = binary_metrics(_labels(), probs, thr)
            ckpt = _checkpoint(out / "ray" / tid) if checkpoint and model == "cnn" else None
            trials.append(
                dict(
                    trial_id=tid,
                    model=model,
                    preset="smoke",
                    seed=0,
                    aug_strength=float(rng.uniform()),
                    class_weight_scale=float(rng.uniform(0.5, 2)),
                    lr=float(10 ** rng.uniform(-4, -2.5)),
                    pretrain_lr=1e-3,
                    image_size=SIZE,
                    epochs=4,
                    pretrain_epochs=1,
                    batch_size=32,
                    epochs_run=n_ep,
                    stop_reason="early_stopped" if stopped else "completed",
                    best_epoch=n_ep,
                    best_val_auc=val,
                    best_val_loss=0.5,
                    test_threshold=thr,
                    **{
                        f"test_{key}": m[key]
                        for key in ("auc", "accuracy", "sensitivity", "specificity", "tn", "fp", "fn", "tp")
                    },
                    error=None,
                    checkpoint_path=str(ckpt) if ckpt else None,
                )
            )
            for e in range(1, n_ep + 1):
                epochs.append(
                    dict(
                        trial_id=tid,
                        model=model,
                        epoch=e,
                        train_loss=0.7 / e,
                        val_loss=0.75 / e,
                        val_auc=val - 0.05 / e,
                        best_val_auc=val - 0.05 / e,
                        lr=1e-3,
                    )
                )
            preds.append(_preds(probs, thr, trial_id=tid, model=model))
    trials.append(dict(trial_id="failed01", model="cnn", stop_reason="error", best_val_auc=None, error="boom"))
    pd.DataFrame(trials).to_parquet(out / "trials.parquet")
    pd.DataFrame(epochs).to_parquet(out / "epochs.parquet")
    pd.concat(preds).to_parquet(out / "predictions.parquet")
    run = dict(
        preset="smoke",
        status="finished",
        sweep=dict(
            models=["cnn", "densenet"],
            image_size=SIZE,
            seed=0,
            val_fraction=0.2,
            aug_range=[0, 1],
            class_weight_scale_range=[0.5, 2.0],
            lr_range=[1e-4, 3e-3],
            pretrain_lrs=[1e-3],
        ),
        args=dict(data_root=None, pretrain_root=None, cache_dir=str(cache_dir)),
    )
    (out / "run.json").write_text(json.dumps(run))
    return out


def make_ablation(root: Path, with_summary: bool = True, data_root: str | None = None) -> Path:
    """ablations / ablation_predictions / ablation_summary / audit_summary.parquet + run.json."""
    out = root / "ablation"
    out.mkdir(parents=True)
    rng = np.random.default_rng(1)
    rows, preds, mats = [], [], {}
    for arm, skill in (("transfer", 1.2), ("no-pretrain", 0.7)):
        for seed in (0, 1):
            probs = _probs(rng, skill)
            mats.setdefault(arm, []).append(probs)
            m = binary_metrics(_labels(), probs, 0.5)
            rows.append(
                dict(
                    arm=arm,
                    model="cnn",
                    seed=seed,
                    config=json.dumps(dict(model="cnn", lr=1e-3)),
                    val_auc=0.8 + 0.01 * seed,
                    test_threshold=0.5,
                    error=None,
                    checkpoint_path=None,
                    **{f"test_{k}": m[k] for k in ("auc", "accuracy", "sensitivity", "specificity")},
                )
            )
            preds.append(_preds(probs, 0.5, arm=arm, model="cnn", seed=seed))
    abl = pd.DataFrame(rows)
    abl.to_parquet(out / "ablations.parquet")
    pd.concat(preds).to_parquet(out / "ablation_predictions.parquet")
    if with_summary:  # as study.ablate writes it
        summarize(abl, pd.concat(preds)).to_parquet(out / "ablation_summary.parquet")
    pd.DataFrame(
        [
            dict(
                arm="transfer",
                a_set="pretraining",
                b_set=b,
                a_images=200,
                by_name=0,
                by_patient=0,
                by_content=0,
                any=0,
                patients_shared=0,
                content_label_conflicts=0,
            )
            for b in ("target-train", "target-val", "target-test")
        ]
    ).to_parquet(out / "audit_summary.parquet")
    (out / "run.json").write_text(
        json.dumps(
            dict(kind="ablation", settings=dict(data_root=data_root, image_size=SIZE), args=dict(cache_dir=None))
        )
    )
    return out


@pytest.fixture(scope="module")
def combined(tmp_path_factory):
    """One full report (sweep + ablation, with pictures and Grad-CAM), built once for the module."""
    root = tmp_path_factory.mktemp("report")
    cache = root / "cache"
    sweep, abl = make_sweep(root, cache), make_ablation(root)
    logged = []
    report = build_report([sweep, abl], n_boot=200, examples=2, gradcam=2, log=logged.append)
    return dict(report=report, sweep=sweep, ablation=abl, log=logged)


def test_roc_figure_plots_exactly_the_best_trials_roc_curve(combined):
    sweep, fig = combined["sweep"], combined["report"].figures["roc"]
    trials = pd.read_parquet(sweep / "trials.parquet")
    preds = pd.read_parquet(sweep / "predictions.parquet")
    lines = {ln.get_gid(): ln for ln in fig.axes[0].get_lines() if ln.get_gid()}
    assert set(lines) == {"roc:cnn", "roc:densenet"}
    for model in ("cnn", "densenet"):
        t = trials[trials.model == model]
        best = t.loc[t.best_val_auc.idxmax(), "trial_id"]  # chosen by validation AUC
        p = preds[preds.trial_id == best].sort_values("path")
        fpr, tpr, _ = roc_curve(p.label, p.probability)
        np.testing.assert_array_equal(lines[f"roc:{model}"].get_xdata(), fpr)
        np.testing.assert_array_equal(lines[f"roc:{model}"].get_ydata(), tpr)


def test_summary_metrics_match_the_predictions_and_have_cis(combined):
    report = combined["report"]
    table = report.tables["test_metrics"].set_index("model")
    for c in report.candidates:
        m = binary_metrics(c.labels, c.probs, c.threshold)
        cell = table.loc[c.label, "test AUC"]
        assert cell.startswith(f"{m['auc']:.3f} [")
        lo, hi = (float(x.replace("\u2212", "-")) for x in cell.split("[")[1].rstrip("]").split(", "))
        assert lo <= m["auc"] <= hi
        # balanced accuracy beside accuracy (the test set is 62.5 % PNEUMONIA), with its own interval
        cell = table.loc[c.label, "balanced accuracy"]
        lo, hi = (float(x.replace("\u2212", "-")) for x in cell.split("[")[1].rstrip("]").split(", "))
        assert cell.startswith(f"{m['balanced_accuracy']:.3f} [") and lo <= m["balanced_accuracy"] <= hi
    assert list(table.columns[:3]) == ["test AUC", "accuracy", "balanced accuracy"]
    assert list(report.tables["best_config"]["trial / seed"]) == ["cnn00004", "den00004"]


def test_importance_figure_lists_every_searched_parameter(combined):
    fig = combined["report"].figures["importance"]
    for ax in fig.axes:
        labels = [t.get_text() for t in ax.get_yticklabels()]
        assert [lab.split(" ")[0] for lab in labels] == list(SEARCHED[:4])  # the ingredients' rows: not searched
        assert "pretrain_lr (fixed)" in labels  # one choice only: not varied
    imp = combined["report"].tables["importance"]
    varied = imp[~imp.fixed]
    assert np.allclose(varied.groupby("model")["importance"].sum(), 1.0, atol=1e-6)


def test_learning_curves_mark_asha_stopped_trials(combined):
    fig = combined["report"].figures["learning_curves"]
    legend = [t.get_text() for t in fig.axes[2].get_legend().get_texts()]
    assert "cnn00003 (ASHA-stopped)" in legend and "cnn00004" in legend  # top 3 of cnn: 4, 3, 2
    line = next(ln for ln in fig.axes[2].get_lines() if ln.get_gid() == "learning:cnn:cnn00003:val_auc")
    assert line.get_linestyle() == "--" and list(line.get_xdata()) == [1, 2]


def test_html_references_every_png_and_every_png_decodes(combined):
    report = combined["report"]
    assert report.out == combined["sweep"] / "report"  # the first folder's report/
    html = report.html.read_text()
    pngs = sorted((report.out / "figures").glob("*.png"))
    assert (
        {p.stem for p in pngs}
        == set(report.figures)
        >= {
            "roc",
            "precision_recall",
            "confusion",
            "calibration",
            "learning_curves",
            "optimisation_history",
            "importance",
            "params",
            "forest",
            "arm_metrics",
            "test_examples",
            "gradcam",
        }
    )
    for p in pngs:
        assert f'src="figures/{p.name}"' in html
        assert (p.with_suffix(".svg")).exists()
        with Image.open(p) as im:
            im.verify()
    assert "no-pretrain vs transfer (cnn): " in html and "p_holm = " in html
    assert "transfer: pre-trained on 200 images; 0 share" in html
    assert "1 trial(s) without a validation AUC" in html  # the failed trial is said, not hidden


def test_forest_plot_draws_the_summary_difference(combined):
    summ = pd.read_parquet(combined["ablation"] / "ablation_summary.parquet")
    row = summ[summ.kind == "vs_transfer"].iloc[0]
    pts = next(ln for ln in combined["report"].figures["forest"].axes[0].get_lines() if ln.get_gid() == "forest")
    assert pts.get_xdata()[0] == pytest.approx(row.auc_diff)


def test_verdicts_in_plain_words():
    # the words come from p_holm and the ΔAUC interval only: a secondary p-value never makes a difference
    base = dict(arm="no-pretrain", reference="transfer", model="cnn", n_seeds=5, n_test=624, p_delong_fixed_models=1e-6)
    r = verdict(dict(base, auc_diff=-0.031, auc_diff_ci_low=-0.060, auc_diff_ci_high=-0.004, p_holm=0.02))
    assert r == (
        "no-pretrain vs transfer (cnn): transfer better by 0.0310 [0.0040, 0.0600] in test AUC, p_holm = 0.02 "
        "(5 paired seeds, 624 test images)"
    )
    r = verdict(dict(base, auc_diff=0.02, auc_diff_ci_low=0.01, auc_diff_ci_high=0.03, p_holm=0.0004))
    assert r.startswith("no-pretrain vs transfer (cnn): no-pretrain better by 0.0200 [0.0100, 0.0300]")
    r = verdict(dict(base, auc_diff=0.01, auc_diff_ci_low=-0.01, auc_diff_ci_high=0.03, p_holm=0.4))
    assert "no difference shown (ΔAUC +0.0100 [-0.0100, +0.0300], p_holm = 0.4" in r
    r = verdict(dict(base, auc_diff=-0.01, auc_diff_ci_low=-0.02, auc_diff_ci_high=-0.001, p_holm=0.07))
    assert "no difference shown" in r  # an interval without 0 but a Holm-adjusted p ≥ 0.05: not a difference


def test_ablation_without_sweep_makes_what_it_can_and_says_what_is_missing(tmp_path):
    abl = make_ablation(tmp_path, data_root="/nonexistent/chest_xray")
    logged = []
    report = build_report([abl], tmp_path / "out", n_boot=100, formats=("png",), log=logged.append)
    assert {"roc", "forest", "arm_metrics"} <= set(report.figures)
    assert not {"learning_curves", "importance"} & set(report.figures)
    html = report.html.read_text()
    text = "no sweep folder (trials.parquet) given: the learning curves and sweep insight are skipped"
    assert any(text in line for line in logged) and text in html
    assert html.count("needs a sweep folder (trials.parquet, epochs.parquet)") == 2  # in both sweep sections
    assert (
        "pictures: test images unavailable: the run's data_root '/nonexistent/chest_xray' is not on this "
        "machine" in html_lib.unescape(html)
    )
    # ablation-only model comparison: each arm's best-validation seed
    assert [c.label for c in report.candidates] == ["cnn · no-pretrain (seed 1)", "cnn · transfer (seed 1)"]


def test_empty_and_missing_folders_give_clear_messages(tmp_path, capsys):
    from study.common import run_main
    from study.report import main

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "run.json").write_text("{}")
    assert run_main(main, [str(tmp_path / "empty"), "--no-images"]) == 2  # nothing to draw: one error line
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: nothing to report: ") and "only run.json" in err
    assert not (tmp_path / "empty" / "report").exists()  # nothing written into a folder without results
    assert run_main(main, [str(tmp_path / "nope")]) == 2
    assert "no such results folder" in capsys.readouterr().err


def test_sweep_without_predictions_skips_the_comparison_with_a_note(tmp_path):
    sweep = make_sweep(tmp_path, tmp_path / "cache", n_trials=2, checkpoint=False)
    (sweep / "predictions.parquet").unlink()
    report = build_report([sweep], n_boot=100, images=False, formats=("png",), log=lambda *_: None)
    assert "roc" not in report.figures and "learning_curves" in report.figures
    assert any("has no rows in predictions.parquet" in n for n in report.notes)


def test_gradcam_on_a_tiny_random_shallow_cnn(tmp_path):
    from pneumo_ray.report.gradcam import explain

    ckpt = _checkpoint(tmp_path / "ckpt") / "best.safetensors"
    rng = np.random.default_rng(0)
    images = (rng.random((3, SIZE, SIZE)) * 255).astype(np.uint8)
    images[:, 8:20, 10:22] = 250  # some structure to attend to
    maps, probs, layer = explain(ckpt, images)
    assert maps.shape == images.shape and probs.shape == (3,)
    assert maps.min() >= 0 and maps.max() <= 1
    assert all(m.std() > 0 for m in maps), "heat-map is constant"
    assert layer.startswith("features.3.2")  # ReLU after the last conv


def test_pictures_use_the_model_checkpoint(combined):
    report = combined["report"]
    cam = report.figures["gradcam"]
    overlays = [im for ax in cam.axes for im in ax.get_images() if (im.get_gid() or "").startswith("gradcam:")]
    assert len(overlays) == 2 and all(im.get_array().shape == (SIZE, SIZE) for im in overlays)
    # the fixture's random checkpoint did not make the fixture's predictions, and the report notices
    assert any("Grad-CAM: the checkpoint gives probabilities" in n for n in report.notes)


def test_help_is_there_for_a_newcomer(capsys):
    from study.report import main

    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "report.html" in text and "examples:" in text and "--out" in text


def _browser():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.skipif(
    _browser() is None,
    reason="no headless Chromium on this machine (chromium, chromium-browser, "
    "google-chrome); see bench/screenshot_report.sh",
)
def test_report_renders_in_headless_chromium(combined, tmp_path):
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            _browser(),
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            f"--screenshot={shot}",
            "--window-size=1400,4000",
            combined["report"].html.resolve().as_uri(),
        ],
        check=True,
        timeout=120,
        capture_output=True,
    )
    with Image.open(shot) as im:
        assert im.size == (1400, 4000)
        assert len(np.unique(np.asarray(im.convert("L")))) > 10  # not a blank page
