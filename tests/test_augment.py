import numpy as np
import pytest
import torch

from pneumo_ray.augment import Augment, Normalize, to_float
from pneumo_ray.datasets import synthetic_set


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
    from pneumo_ray.augment import affine_grid
    theta = torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(affine_grid(theta, 7, 11), torch_grid(theta, [5, 1, 7, 11], align_corners=False), atol=1e-6)


def test_fused_normalization_equals_separate_steps(batch):
    norm = Normalize(0.4, 0.2)
    fused = Augment(0.8)(batch, torch.Generator().manual_seed(3), norm)
    separate = norm(Augment(0.8)(batch, torch.Generator().manual_seed(3)))
    assert torch.allclose(fused, separate, atol=1e-5)
    assert torch.equal(Augment(0.0)(batch, None, norm), norm(batch))
