"""The fine-tuning ingredients (config/ingredients.py): each changes training only where it acts, off
leaves every number as it was, each is deterministic on the CPU, and each reaches the run through the
command a user types. Tiny synthetic data at 32 px (tests/test_resume.py's), a few seconds per fit."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar
from test_resume import PHASE, Killed, assert_same_result, history, same_tensors, save_then_die, tiny_data

from pneumo_ray.analysis.metrics import decision_threshold
from pneumo_ray.config.errors import UserError
from pneumo_ray.config.ingredients import INGREDIENTS
from pneumo_ray.config.train import TrainConfig
from pneumo_ray.train import checkpoints, loop, photometric, tta
from pneumo_ray.train.augment import Augment, Normalize, to_float
from pneumo_ray.train.ema import WeightEMA
from pneumo_ray.train.loop import _mixup_bce, _weighted_bce, fit, predict, train_one_epoch
from pneumo_ray.train.models import build_model
from pneumo_ray.train.photometric import Photometric, equalized

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
ON = dict(ema=0.9, mixup=0.4, label_smoothing=0.1, photometric=0.6, tta=True)
TRAINING = ("mixup", "label_smoothing", "photometric")  # change the training steps themselves
SCORING = ("ema", "tta")  # change only what validation (and test) score


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_data(tmp_path_factory.mktemp("cache"))


def run(data, phase=PHASE, **kw):
    torch.manual_seed(0)
    model = build_model("cnn")
    return model, fit(model, data.train, data.val, phase, device=CPU, progress=False, log=None, **kw)


SHORT = dataclasses.replace(PHASE, epochs=2)


@pytest.fixture(scope="module")
def off(tiny):
    return run(tiny, SHORT)


def _never(name):
    def fail(*a, **k):
        raise AssertionError(f"{name} reached with every ingredient off")

    return fail


def test_off_never_reaches_an_ingredient(tiny, off, monkeypatch):
    """With every ingredient off (the defaults) none of their code runs and no generator of theirs is
    made: the numbers are those of the loop before them (bit for bit: same history, weights, probabilities)."""
    for target, name in (
        (photometric.Photometric, "__call__"),
        (loop, "WeightEMA"),
        (loop, "views"),
        (loop, "_mixup_bce"),
    ):
        monkeypatch.setattr(target, name, _never(name))
    monkeypatch.setattr(loop, "_targets", lambda y, s: y if s == 0 else _never("smoothing")())
    _, again = run(tiny, SHORT)
    assert_same_result(again, off[1])
    assert all(getattr(TrainConfig(), i.field) in (0.0, False) for i in INGREDIENTS)
    assert all(getattr(PHASE, i.field) in (0.0, False) for i in INGREDIENTS)


@pytest.mark.parametrize("name", [i.field for i in INGREDIENTS])
def test_each_ingredient_changes_what_it_names_and_nothing_else(tiny, off, name):
    phase = dataclasses.replace(SHORT, **{name: ON[name]})
    _, on = run(tiny, phase)
    _, base = off
    train_loss = [h["train_loss"] for h in on.history]
    val_auc = [h["val_auc"] for h in on.history]
    if name in TRAINING:
        assert train_loss != [h["train_loss"] for h in base.history]
    else:  # EMA and TTA train the same weights: the training losses are the old ones bit for bit
        assert train_loss == [h["train_loss"] for h in base.history]
        assert not same_tensors(on.best_state, base.best_state) or val_auc != [h["val_auc"] for h in base.history]
    assert not np.array_equal(on.best_val_probs, base.best_val_probs)
    assert (on.normalize, on.weights) == (base.normalize, base.weights)
    expected = 0.05 + 0.9 * base.threshold if name == "label_smoothing" else base.threshold
    assert on.threshold == pytest.approx(expected)
    if name in ("mixup", "photometric"):  # their own random draws: same seed, same numbers
        _, again = run(tiny, phase)
        assert_same_result(again, on)


def test_photometric_and_mixup_draw_from_their_own_streams(tiny, monkeypatch):
    """Photometric on: the warp's draws are those it made without it (its generator is separate).
    Mixup on: no global stream moves more than without it (dropout draws the same count)."""
    drawn = {}

    def record(key):
        real = Augment.draw

        def draw(self, *a, **k):
            out = real(self, *a, **k)
            drawn.setdefault(key, []).append(torch.cat([out[0].flatten(1), out[1][:, None], out[2][:, None]], 1))
            return out

        return draw

    state_after = {}
    for key, kw in (("off", {}), ("photometric", dict(photometric=0.7)), ("mixup", dict(mixup=0.4))):
        monkeypatch.setattr(Augment, "draw", record(key))
        torch.manual_seed(3), np.random.seed(3), random.seed(3)
        model = build_model("cnn")
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        train_one_epoch(
            model,
            tiny.train,
            opt,
            None,
            augment=Augment(0.5),
            normalize=Normalize(),
            weights=(2.0, 1.0),
            device=CPU,
            batch_size=32,
            seed=1,
            epoch=1,
            **kw,
        )
        state_after[key] = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    for key in ("photometric", "mixup"):
        assert all(torch.equal(a, b) for a, b in zip(drawn["off"], drawn[key]))
        assert torch.equal(state_after["off"][0], state_after[key][0])
        assert (
            np.array_equal(state_after["off"][1], state_after[key][1]) and state_after["off"][2] == state_after[key][2]
        )


# --- mixup and label smoothing: the loss and its decision threshold -------------------------------------


def test_mixup_keeps_each_labels_class_weight():
    """The mixed loss is λ·(weighted BCE towards label i) + (1 − λ)·(weighted BCE towards label j), each
    with its own class weight, over the total weight; at λ = 1 it is the unmixed weighted BCE."""
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(12, generator=g), (torch.rand(12, generator=g) > 0.4).float()
    w = torch.tensor([2.5, 1.0])
    assert torch.allclose(_mixup_bce(logits, y, w, 1.0), _weighted_bce(logits, y, w), rtol=0, atol=1e-7)
    lam, eps = 0.3, 0.2
    by_hand, total = 0.0, 0.0
    for k in range(12):
        for yy, share in ((y[k], lam), (y.flip(0)[k], 1 - lam)):
            wk = float(w[1] if yy > 0.5 else w[0]) * share
            t = float(yy) * (1 - eps) + eps / 2
            z = float(logits[k])
            by_hand += wk * (max(z, 0) - z * t + np.log1p(np.exp(-abs(z))))
            total += wk
    assert float(_mixup_bce(logits, y, w, lam, eps)) == pytest.approx(by_hand / total, rel=1e-6)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("weights, counts", [((1.0, 1.0), (300, 700)), ((0.514 * 2.9, 1.0), (1076, 3096))])
def test_smoothed_threshold_is_where_the_smoothed_loss_says_likelihood_ratio_one(eps, weights, counts):
    """Minimise the population loss of smoothed, class-weighted BCE at an input whose likelihood ratio
    is 1 (posterior = training prevalence): the model's output there is decision_threshold(.., eps)."""
    (w0, w1), (n0, n1) = weights, counts
    p1 = n1 / (n0 + n1)

    def loss(q):
        t1, t0 = 1 - eps / 2, eps / 2
        bce = lambda t: -(t * np.log(q) + (1 - t) * np.log(1 - q))  # noqa: E731
        return p1 * w1 * bce(t1) + (1 - p1) * w0 * bce(t0)

    q = minimize_scalar(loss, bounds=(1e-9, 1 - 1e-9), method="bounded", options=dict(xatol=1e-12)).x
    assert q == pytest.approx(decision_threshold(weights, counts, eps), abs=1e-7)
    if eps == 0:
        assert decision_threshold(weights, counts, eps) == decision_threshold(weights, counts)


# --- weight EMA ---------------------------------------------------------------------------------------


def test_ema_averages_weights_and_batchnorm_statistics_with_warm_up():
    torch.manual_seed(0)
    net = build_model("cnn")
    ema = WeightEMA(net, 0.999)
    x = torch.randn(8, 1, 32, 32)
    before = {k: v.clone() for k, v in ema.model.state_dict().items()}
    ema.update(net)  # the first update copies
    assert same_tensors({k: v for k, v in ema.model.state_dict().items()}, before)
    net(x)  # train mode: BatchNorm's running statistics move
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    ema.update(net)  # t = 1: decay min(0.999, 2/11)
    d = 2 / 11
    for (k, a), b, c in zip(ema.model.state_dict().items(), before.values(), net.state_dict().values()):
        if k.endswith("num_batches_tracked"):
            assert torch.equal(a, c)  # counters are copied
        else:
            assert torch.allclose(a, d * b + (1 - d) * c, atol=1e-6), k
    assert ema.steps == 2 and int(ema.state_dict()["n_averaged"]) == 2


def test_ema_update_is_averaged_models_without_copies_to_the_device():
    """The same numbers as AveragedModel.update_parameters with the same EMA, bit for bit; but no step
    copies anything from the host to the device (AveragedModel copies its counter there for each
    group of parameters, every step: a host wait on a GPU; the meta device stands in for one)."""
    from test_augment import _HostToMeta
    from torch.optim.swa_utils import AveragedModel

    torch.manual_seed(0)
    net = build_model("cnn")
    ema, ref = WeightEMA(net, 0.99), AveragedModel(net, use_buffers=True)

    def same_ema(averaged, current, _):
        decay = min(0.99, (1 + ref_steps[0]) / (10 + ref_steps[0]))
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1 - decay)
        else:
            torch._foreach_copy_(averaged, current)

    ref.multi_avg_fn, ref_steps = same_ema, [0]
    opt = torch.optim.SGD(net.parameters(), 0.1)
    for _ in range(4):
        net(torch.randn(4, 1, 32, 32)).sum().backward()
        opt.step()
        ema.update(net)
        ref.update_parameters(net)
        ref_steps[0] += 1
    assert same_tensors(ema.state_dict(), ref.state_dict())
    meta = build_model("cnn").to("meta")
    counted = {}
    for name, average in (("ours", WeightEMA(meta, 0.99)), ("AveragedModel", AveragedModel(meta, use_buffers=True))):
        step = average.update if name == "ours" else average.update_parameters
        step(meta)
        with _HostToMeta() as mode:
            step(meta)
        counted[name] = mode.copies
    assert counted["ours"] == 0 and counted["AveragedModel"] >= 1


def test_ema_is_what_validation_selects_and_saves(tiny):
    phase = dataclasses.replace(SHORT, ema=0.9)
    states = []
    model, result = run(tiny, phase, on_state=states.append)
    best = states[result.best_epoch - 1]
    ema_weights = {k[len("module.") :]: v for k, v in best.ema.items() if k.startswith("module.")}
    assert same_tensors(result.best_state, ema_weights)
    assert not same_tensors(result.best_state, best.model)  # not the live weights


def test_resume_with_ema_equals_uninterrupted(tiny, tmp_path, stop_after=1):
    """Killed after an epoch, resumed from the saved TrainingState (the EMA's average and step count
    included) in a fresh model: bit for bit the uninterrupted run."""
    phase = dataclasses.replace(PHASE, ema=0.9)
    model_full, full = run(tiny, phase)
    with pytest.raises(Killed):
        run(tiny, phase, on_state=save_then_die(tmp_path, stop_after))
    state = checkpoints.load_training_state(tmp_path / f"epoch-{stop_after}")
    assert state.ema is not None and int(state.ema["n_averaged"]) == stop_after * 4
    torch.manual_seed(99)
    model = build_model("cnn")
    resumed = fit(model, tiny.train, tiny.val, phase, device=CPU, resume=state, progress=False, log=None)
    assert history(resumed) == history(full)
    assert same_tensors(model.state_dict(), model_full.state_dict())
    assert_same_result(resumed, full)


# --- photometric augmentation ---------------------------------------------------------------------------


def test_equalisation_spreads_the_grey_levels_in_order():
    x = torch.tensor([0, 10, 10, 20, 200, 200, 200, 250], dtype=torch.float32).view(1, 1, 2, 4) / 255
    e = equalized(x).flatten()
    assert e[0] == 0 and e[-1] == 1 and torch.all(e[1:] >= e[:-1])  # order kept, full range
    assert torch.allclose(e, torch.tensor([0, 2, 2, 3, 6, 6, 6, 7]) / 7)  # (cdf − cdf_min) / (1 − cdf_min)
    flat = torch.full((1, 1, 3, 3), 0.4)
    assert torch.equal(equalized(flat), flat)


def test_photometric_tables_equal_the_steps_pixel_by_pixel(tiny):
    """The per-image 256-entry table gives what the definition gives applied to every pixel in turn:
    blend with the equalised image, gamma, contrast around the (new) mean, clip."""
    x = to_float(torch.from_numpy(tiny.train.batch(np.arange(16))))
    x[3] = 77 / 255  # a flat image too
    fast = Photometric(0.9)(x, torch.Generator().manual_seed(2))
    e, gamma, contrast = (
        Photometric(0.9).draw(16, torch.Generator().manual_seed(2), CPU, x.dtype).T.view(3, 16, 1, 1, 1)
    )
    y = ((1 - e) * x + e * equalized(x)).clamp_min(0) ** gamma
    y = (contrast * y + (1 - contrast) * y.mean(dim=(1, 2, 3), keepdim=True)).clamp(0, 1)
    assert torch.allclose(fast, y, rtol=0, atol=1e-6)
    assert torch.equal(equalized(x)[3], x[3])


def test_photometric_is_seeded_in_range_and_reaches_the_device_in_one_copy(tiny):
    x = to_float(torch.from_numpy(tiny.train.batch(np.arange(16))))
    a = Photometric(0.8)(x, torch.Generator().manual_seed(5))
    b = Photometric(0.8)(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, x) and 0 <= a.min() and a.max() <= 1
    from test_augment import _HostToMeta

    with _HostToMeta() as mode:
        params = Photometric(0.8).draw(32, torch.Generator().manual_seed(0), torch.device("meta"), torch.float32)
    assert mode.copies == 1 and params.shape == (32, 3) and params.device.type == "meta"
    eq, gamma, contrast = Photometric(1.0).draw(10_000, torch.Generator().manual_seed(0), CPU, torch.float64).T
    assert 0 <= eq.min() and eq.max() <= 1 and 0.5 <= gamma.min() and gamma.max() <= 2
    assert 0.5 <= contrast.min() and contrast.max() <= 1.5


# --- test-time augmentation -----------------------------------------------------------------------------


def test_tta_is_deterministic_and_independent_of_the_batch(tiny):
    torch.manual_seed(0)
    model = build_model("cnn")
    norm = Normalize(0.45, 0.22)
    a = predict(model, tiny.val, normalize=norm, device=CPU, batch_size=128, tta=True)
    b = predict(model, tiny.val, normalize=norm, device=CPU, batch_size=128, tta=True)
    c = predict(model, tiny.val, normalize=norm, device=CPU, batch_size=7, tta=True)
    plain = predict(model, tiny.val, normalize=norm, device=CPU)
    assert np.array_equal(a, b)
    # each image's views depend on it alone (bit for bit); the convolution itself may round with the
    # batch size on some CPUs, as without TTA
    x = to_float(torch.from_numpy(tiny.val.batch(np.arange(20))))
    whole, parts = list(tta.views(x, norm)), [list(tta.views(x[i : i + 7], norm)) for i in (0, 7, 14)]
    assert all(torch.equal(w, torch.cat(p)) for w, p in zip(whole, zip(*parts)))
    assert np.allclose(a, c, rtol=0, atol=1e-6)
    assert torch.equal(whole[0], norm(x))  # the first view is what evaluation without TTA scores
    assert not np.allclose(a, plain)
    with torch.no_grad():  # the mean probability over the views, image by image
        model.eval()
        one = torch.stack([torch.sigmoid(model(v[:1])) for v in whole]).mean().item()
    assert a[0] == pytest.approx(one, abs=1e-6)


# --- through the commands -------------------------------------------------------------------------------


def test_train_flags_reach_the_config():
    from study import train

    parser = train.get_args_parser()
    assert train.config_from_args(parser.parse_args([])) == TrainConfig()
    for i in INGREDIENTS:
        argv = [i.flag] if i.metavar is None else [i.flag, str(ON[i.field])]
        cfg = train.config_from_args(parser.parse_args(argv))
        assert cfg == TrainConfig(**{i.field: ON[i.field]}), i.flag
    cfg = train.config_from_args(parser.parse_args(["--class-weight-scale", "0.514"]))
    assert cfg.class_weight_scale == 0.514


def test_train_with_every_ingredient_on_a_tiny_run(tmp_path, cache_dir):
    """study.train as a user types it, every ingredient on: they are recorded, and the threshold is the
    smoothed loss's."""
    out = tmp_path / "run"
    argv = ["--image-size", "32", "--epochs", "1", "--no-pretrain", "--out", str(out)]
    argv += ["--ema", "0.99", "--mixup", "0.2", "--label-smoothing", "0.1", "--photometric", "0.5", "--tta"]
    argv += ["--class-weight-scale", "0.5"]
    r = subprocess.run(
        [sys.executable, "-m", "study.train", *argv],
        cwd=ROOT,
        env={**os.environ, "PNEUMO_RAY_CACHE": str(cache_dir)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert {k: m["config"][k] for k in ON} == dict(ON, ema=0.99, mixup=0.2, photometric=0.5)
    assert m["threshold"] == pytest.approx(0.05 + 0.9 / 1.5)  # inverse-frequency weights scaled by 0.5, ε = 0.1
    assert np.isfinite(m["test_auc"]) and "test_balanced_accuracy" in r.stdout
    meta = json.loads((out / "finetune.json").read_text())
    assert meta["config"]["tta"] is True and meta["threshold"] == m["threshold"]


def test_bad_ingredient_values_are_one_line():
    for argv, message in (
        (["--ema", "1"], "error: --ema 1: the EMA decay must be 0 (off) or more and below 1"),
        (["--photometric", "2"], "error: --photometric 2: the photometric strength must be 0 (off) or more and at"),
        (["--mixup", "-1"], "error: --mixup -1: the mixup alpha must be 0 (off) or more"),
    ):
        r = subprocess.run(
            [sys.executable, "-m", "study.train", *argv], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert r.returncode == 2 and r.stderr.startswith(message), r.stderr


def _ablate_arm(argv, tmp_path):
    from study import ablate, common

    parser = ablate.get_args_parser()
    args = parser.parse_args(common.attach_negative_values([*argv, "--results", str(tmp_path)], parser))
    return ablate.specs(args)


def test_ablate_arm_flags_name_the_arm_and_switch_one_on(tmp_path):
    """The arm flags through study.ablate's own parser (no Ray): the name says each value, the arm's
    configuration has them on top of the transfer arm's, and its search leaves them fixed."""
    sweep, abl, _ = _ablate_arm([], tmp_path)
    base = abl.arm.apply(sweep.base_config("cnn"))
    cases = {
        ("--ema", "0.999"): ("transfer+ema-0.999", dict(ema=0.999)),
        ("--mixup", "0.2"): ("transfer+mixup-0.2", dict(mixup=0.2)),
        ("--label-smoothing", "0.1"): ("transfer+label-smoothing-0.1", dict(label_smoothing=0.1)),
        ("--photometric", "0.5"): ("transfer+photometric-0.5", dict(photometric=0.5)),
        ("--tta",): ("transfer+tta", dict(tta=True)),
        ("--tta", "--mixup", "0.2", "--ema", "0.99"): (
            "transfer+ema-0.99+mixup-0.2+tta",
            dict(ema=0.99, mixup=0.2, tta=True),
        ),
        ("--no-pretrain", "--photometric", "1"): (
            "no-pretrain+photometric-1",
            dict(photometric=1.0, pretrain_epochs=0),
        ),
    }
    for argv, (name, changes) in cases.items():
        sweep, abl, _ = _ablate_arm(list(argv), tmp_path)
        assert abl.arm.name == name
        assert abl.arm.apply(sweep.base_config("cnn")) == base.replace(**changes)
        assert not set(changes) & set(abl.arm.searched(sweep.searched()))
    with pytest.raises(UserError, match="--ema 0: 0 is off, as in the arm without the flag"):
        _ablate_arm(["--ema", "0"], tmp_path)
    with pytest.raises(UserError, match="--label-smoothing 1: the label smoothing must be"):
        _ablate_arm(["--label-smoothing", "1"], tmp_path)


def test_sweep_ingredient_flags_fix_every_trial(monkeypatch, tmp_path):
    from study import common, sweep

    got = {}
    import pneumo_ray.distributed.sweep as driver

    monkeypatch.setattr(driver, "run_sweep", lambda s, d, o: got.update(sweep=s) or 0)
    argv = ["--results", str(tmp_path), "--name", "s", "--mixup", "0.2", "--tta", "--photometric-range", "0,0.8"]
    assert common.run_main(sweep.main, argv) == 0
    s = got["sweep"]
    assert (s.mixup, s.tta, s.photometric_range) == (0.2, True, (0.0, 0.8))
    assert s.base_config("cnn").mixup == 0.2 and s.base_config("cnn").tta is True
    assert s.searched()[-1] == "photometric"
    assert common.run_main(sweep.main, [*argv[:4], "--mixup", "0.2", "--mixup-range", "0,0.4"]) == 2
