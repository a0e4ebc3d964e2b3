import logging
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pneumo_ray.data.study_data import synthetic_set
from pneumo_ray.train import augment as augment_module
from pneumo_ray.train import fastwarp
from pneumo_ray.train.augment import Augment, Normalize, to_float


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    s = synthetic_set("target_train", 64, tmp_path_factory.mktemp("c"), n=16)
    return to_float(torch.from_numpy(s.batch(np.arange(16))))


def test_strength_zero_is_identity(batch):
    out = Augment(0.0)(batch, torch.Generator().manual_seed(0))
    assert torch.equal(out, batch)


def test_strength_one_changes_every_image_and_stays_in_range(batch):
    out = Augment(1.0)(batch, torch.Generator().manual_seed(0))
    assert out.shape == batch.shape and out.dtype == batch.dtype
    per_image = (out - batch).abs().flatten(1).mean(1)
    assert (per_image > 0.01).all()
    assert out.min() >= 0 and out.max() <= 1


def test_strength_scales_the_change(batch):
    d = [(Augment(s)(batch, torch.Generator().manual_seed(1)) - batch).abs().mean().item() for s in (0.1, 0.5, 1.0)]
    assert d[0] < d[1] < d[2]


def test_seeded_and_flip_off_by_default(batch):
    a = Augment(0.7)(batch, torch.Generator().manual_seed(5))
    b = Augment(0.7)(batch, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert not Augment().hflip
    flipped = Augment(0.0, hflip=True)(batch, torch.Generator().manual_seed(0))
    n_flipped = sum(torch.equal(f, x.flip(-1)) for f, x in zip(flipped, batch))
    assert 0 < n_flipped < len(batch)


def test_normalize_uses_given_stats(batch):
    n = Normalize(float(batch.mean()), float(batch.std()))
    z = n(batch)
    assert abs(z.mean().item()) < 1e-5 and abs(z.std().item() - 1) < 1e-3


def test_invalid_strength():
    with pytest.raises(ValueError, match="strength"):
        Augment(1.5)


def test_fast_grid_equals_torch_affine_grid():
    from torch.nn.functional import affine_grid as torch_grid

    from pneumo_ray.train.augment import affine_grid

    theta = torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(affine_grid(theta, 7, 11), torch_grid(theta, [5, 1, 7, 11], align_corners=False), atol=1e-6)


def test_fused_normalization_equals_separate_steps(batch):
    norm = Normalize(0.4, 0.2)
    fused = Augment(0.8)(batch, torch.Generator().manual_seed(3), norm)
    separate = norm(Augment(0.8)(batch, torch.Generator().manual_seed(3)))
    assert torch.allclose(fused, separate, atol=1e-5)
    assert torch.equal(Augment(0.0)(batch, None, norm), norm(batch))


# --- the fused C kernel (pneumo_ray/train/fastwarp.py) against torch's grid_sample path ---


@pytest.fixture
def kernel_on(monkeypatch):
    """The C kernel, required wherever a C compiler is (else the comparisons below compare torch with torch)."""
    monkeypatch.delenv("PNEUMO_RAY_NO_FASTWARP", raising=False)
    if fastwarp.kernel() is None:
        assert shutil.which("gcc") is None, "gcc is installed but the fast augmentation kernel did not build"
        pytest.skip("no C compiler: the fast augmentation kernel is unavailable")


def _images(size, tmp_path_factory):
    """Smooth phantoms plus pure noise (every pixel differs from its neighbours: the hardest case)."""
    s = synthetic_set("target_train", size, tmp_path_factory.mktemp("c"), n=6)
    noise = torch.rand(4, 1, size, size, generator=torch.Generator().manual_seed(size))
    return torch.cat([to_float(torch.from_numpy(s.batch(np.arange(6)))), noise])


def _torch_path(monkeypatch, aug, x, seed, norm):
    with monkeypatch.context() as m:
        m.setenv("PNEUMO_RAY_NO_FASTWARP", "1")
        return aug(x, torch.Generator().manual_seed(seed), norm)


@pytest.mark.parametrize("size", [32, 64, 224])
def test_fast_path_equals_torch_path(kernel_on, monkeypatch, tmp_path_factory, size):
    x = _images(size, tmp_path_factory)
    used = []  # per call: whether the kernel produced the result
    real = fastwarp.augment

    def spy(*args):
        out = real(*args)
        used.append(out is not None)
        return out

    monkeypatch.setattr(fastwarp, "augment", spy)
    for strength in (0.1, 0.5, 1.0):
        for hflip in (False, True):
            for norm in (None, Normalize(0.45, 0.2)):
                aug = Augment(strength, hflip)
                fast = aug(x, torch.Generator().manual_seed(7), norm)
                ref = _torch_path(monkeypatch, aug, x, 7, norm)
                assert fast.shape == ref.shape and fast.dtype == ref.dtype
                err = (fast - ref).abs().max().item()
                assert err < 1e-4, (size, strength, hflip, norm, err)
    assert used == [True, False] * 12  # each fast call went through the kernel, each reference did not


def _reference(x, theta, contrast, brightness, mu, sd):
    """The torch definition, written out: grid_sample on affine_grid, border padding, align_corners=False."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    c, b = contrast.view(-1, 1, 1, 1), brightness.view(-1, 1, 1, 1)
    y = (out * c + out.mean(dim=(1, 2, 3), keepdim=True) * (1 - c) + b - mu) / sd
    return y.clamp((0 - mu) / sd, (1 - mu) / sd)


def test_kernel_at_borders_and_non_square(kernel_on):
    """Transforms that sample far outside the image (border padding repeats the edge pixels), exact
    edges, mirrors and a 90° turn, on a non-square image."""
    x = torch.rand(8, 1, 37, 53, generator=torch.Generator().manual_seed(0))
    theta = torch.tensor(
        [
            [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],  # identity
            [[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],  # mirror
            [[1.0, 0.0, 1.5], [0.0, 1.0, -1.2]],  # shifted mostly off the image
            [[2.5, 0.0, 0.0], [0.0, 2.5, 0.0]],  # zoomed out 2.5x: wide border margins
            [[0.3, 0.0, 0.9], [0.0, 0.3, 0.9]],  # zoomed into a corner
            [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0]],  # 90° turn (non-square: stretched, sampling past edges)
            [[1.0, 0.4, 0.0], [-0.3, 1.2, 0.2]],  # shear
            [[0.0, 0.0, 3.0], [0.0, 0.0, -3.0]],  # every output pixel is the one corner pixel
        ]
    )
    contrast = torch.tensor([1.0, 0.8, 1.2, 1.0, 0.75, 1.25, 1.1, 0.9])
    brightness = torch.tensor([0.0, 0.1, -0.1, 0.05, 0.0, -0.05, 0.15, 0.0])
    fast = fastwarp.augment(x, theta, contrast, brightness, 0.45, 0.2)
    ref = _reference(x, theta, contrast, brightness, 0.45, 0.2)
    assert (fast - ref).abs().max().item() < 1e-4
    assert torch.allclose(fast[0], (x[0] - 0.45) / 0.2, atol=1e-5)  # identity: untouched pixels
    corner = (x[7, 0, 0, -1] - 0.45) / 0.2  # x → +inf, y → -inf: the top-right pixel, everywhere
    assert torch.allclose(fast[7], corner.expand(1, 37, 53), atol=1e-5)


def test_strength_zero_identity_with_fast_path(kernel_on, batch):
    assert torch.equal(Augment(0.0)(batch, torch.Generator().manual_seed(0)), batch)
    flipped = Augment(0.0, hflip=True)(batch, torch.Generator().manual_seed(0))
    # with the kernel, the flip alone is exact (integer sampling positions, weights 0 and 1)
    assert all(torch.equal(f, x) or torch.equal(f, x.flip(-1)) for f, x in zip(flipped, batch))


def test_env_var_forces_torch_path(monkeypatch, batch):
    calls = []
    real = F.grid_sample
    monkeypatch.setattr(augment_module.F, "grid_sample", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setenv("PNEUMO_RAY_NO_FASTWARP", "1")
    assert fastwarp.kernel() is None
    Augment(0.5)(batch, torch.Generator().manual_seed(0))
    assert calls == [1]
    monkeypatch.delenv("PNEUMO_RAY_NO_FASTWARP")
    if fastwarp.kernel() is not None:  # and without it, the CPU batch never reaches grid_sample
        Augment(0.5)(batch, torch.Generator().manual_seed(0))
        assert calls == [1]


def test_failed_build_falls_back_with_one_warning(monkeypatch, caplog, batch):
    monkeypatch.delenv("PNEUMO_RAY_NO_FASTWARP", raising=False)
    monkeypatch.setattr(fastwarp, "_kernel", None)
    monkeypatch.setattr(fastwarp, "_failed", False)

    def broken(path):
        raise RuntimeError("gcc failed: simulated")

    monkeypatch.setattr(fastwarp, "build", broken)
    with caplog.at_level(logging.WARNING, logger="pneumo_ray.train.fastwarp"):
        a = Augment(0.6)(batch, torch.Generator().manual_seed(2))
        b = Augment(0.6)(batch, torch.Generator().manual_seed(2))
    assert fastwarp.kernel() is None
    assert len(caplog.records) == 1 and "simulated" in caplog.records[0].getMessage()  # warned once, not per call
    assert torch.equal(a, b) and not torch.equal(a, batch)


def test_build_is_keyed_by_source_and_atomic(tmp_path, monkeypatch):
    if shutil.which("gcc") is None:
        pytest.skip("no C compiler")
    path = fastwarp.library_path(tmp_path)
    edited = tmp_path / "_warp.c"
    edited.write_text(fastwarp.SOURCE.read_text() + "\n/* edited */\n")
    with monkeypatch.context() as m:
        m.setattr(fastwarp, "SOURCE", edited)
        assert fastwarp.library_path(tmp_path) != path  # an edited kernel never loads a stale library
    assert path.parent == tmp_path / "fastwarp" and path.name.startswith("warp-") and path.suffix == ".so"
    assert fastwarp.build(path) == path and path.stat().st_size > 0
    mtime = path.stat().st_mtime_ns
    assert fastwarp.build(path) == path and path.stat().st_mtime_ns == mtime  # built once, then reused
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary file left behind


def test_kernel_reads_only_inside_the_image(kernel_on):
    """At the last row and column the next pixel has weight 0, but must not be read either: here
    the memory right after the batch holds NaN, which 0 · NaN would carry into the output."""
    storage = torch.full((2 * 9 * 11 + 64,), float("nan"))
    x = storage[: 2 * 9 * 11].view(2, 1, 9, 11)
    x.copy_(torch.rand(2, 1, 9, 11, generator=torch.Generator().manual_seed(0)))
    theta = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [[0.5, 0.0, 3.0], [0.0, 0.5, 3.0]]])
    out = fastwarp.augment(x, theta, torch.ones(2), torch.zeros(2), 0.0, 1.0)
    assert torch.isfinite(out).all()
    assert torch.allclose(out[0], x[0], atol=1e-6) and torch.allclose(out[1], x[1, :, -1:, -1:].expand(1, 9, 11))
