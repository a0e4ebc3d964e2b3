"""Decoding by real range: every pixel format a user's download may hold comes out as the grey levels a
numpy reference conversion gives (before: a full-range 16-bit PNG 90% white, a float image all black),
and an ordinary 8-bit JPEG or PNG decodes bit for bit as it always did."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pneumo_ray.data import cache

N = 64  # image side: decoded at its own size, so only the pixel conversion is compared


def _smooth(seed: int = 0, n: int = N) -> np.ndarray:
    """A smooth field in [0, 1] (gradient plus blobs): survives JPEG and keeps every grey level busy."""
    y, x = np.mgrid[0:n, 0:n] / (n - 1)
    rng = np.random.default_rng(seed)
    f = 0.5 * x + 0.3 * y
    for cx, cy, r in rng.uniform(0.1, 0.9, (4, 3)):
        f = f + 0.25 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (0.05 * r))
    return (f - f.min()) / (f.max() - f.min())


def _luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma, as Pillow's RGB → L: the reference for every colour format."""
    rgb = rgb.astype(np.float64)
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def _compare(got: np.ndarray, want: np.ndarray, max_err: float, full_range: bool = False) -> None:
    assert got.shape == want.shape and got.dtype == np.uint8
    corr = np.corrcoef(got.ravel().astype(np.float64), want.ravel())[0, 1]
    err = np.abs(got.astype(np.float64) - want).max()
    assert corr > 0.99 and err <= max_err, f"correlation {corr:.4f}, max abs error {err:.1f}"
    if full_range:
        assert got.min() <= 1 and got.max() >= 254, "a full-range image must come out full range"


def test_16bit_png_full_range_scales_by_its_bit_depth(tmp_path):
    v = np.round(_smooth() * 65535).astype(np.uint16)
    p = tmp_path / "x16.png"
    Image.fromarray(v).save(p)
    assert Image.open(p).mode == "I;16"
    _compare(cache.decode_image(str(p), N), v / 257.0, 0.51, full_range=True)  # 65535 → 255
    assert (_as_before(str(p), N) == 255).mean() > 0.9  # the bug: Pillow's convert("L") clips


def test_16bit_big_endian_tiff(tmp_path):
    v = np.round(_smooth(1) * 65535).astype(np.uint16)
    p = tmp_path / "x16b.tif"
    Image.frombytes("I;16B", (N, N), v.astype(">u2").tobytes()).save(p)
    assert Image.open(p).mode == "I;16B"
    _compare(cache.decode_image(str(p), N), v / 257.0, 0.51, full_range=True)


def test_16bit_png_of_low_values_keeps_its_declared_scale(tmp_path):
    """A 16-bit file whose pixels use only the low 12 bits is dark, as its bit depth says: a declared
    depth is followed, not stretched per image."""
    v = np.round(_smooth() * 4095).astype(np.uint16)
    p = tmp_path / "x12in16.png"
    Image.fromarray(v).save(p)
    got = cache.decode_image(str(p), N)
    assert np.abs(got - v / 257.0).max() <= 0.51 and got.max() <= 16


def test_32bit_integer_tiff_scales_by_its_min_max(tmp_path):
    v = np.round(_smooth(2) * (2**32 - 2) - 2**31).astype(np.int64).astype(np.int32)
    p = tmp_path / "x32.tif"
    Image.fromarray(v).save(p)
    assert Image.open(p).mode == "I"
    want = (v.astype(np.float64) - v.min()) / (float(v.max()) - v.min()) * 255
    _compare(cache.decode_image(str(p), N), want, 0.51, full_range=True)


def test_float_tiff_scales_by_its_min_max(tmp_path):
    for lo, hi in ((0.0, 1.0), (-3.5, 1000.0)):  # a normalised image and one in physical units
        v = (lo + _smooth(3) * (hi - lo)).astype(np.float32)
        p = tmp_path / f"f{hi:g}.tif"
        Image.fromarray(v).save(p)
        assert Image.open(p).mode == "F"
        want = (v.astype(np.float64) - v.min()) / (float(v.max()) - v.min()) * 255
        _compare(cache.decode_image(str(p), N), want, 0.51, full_range=True)
    assert _as_before(str(tmp_path / "f1.tif"), N).max() <= 1  # the bug: all black


def test_float_nan_and_constant_images(tmp_path):
    v = _smooth(4).astype(np.float32)
    v[:4, :4] = np.nan
    p = tmp_path / "nan.tif"
    Image.fromarray(v).save(p)
    got = cache.decode_image(str(p), N)
    assert (got[:4, :4] == 0).all() and got.max() == 255
    p = tmp_path / "flat.tif"
    Image.fromarray(np.full((N, N), 7.0, np.float32)).save(p)
    assert (cache.decode_image(str(p), N) == 0).all()


@pytest.mark.parametrize("transparency", [False, True])
def test_palette_png_goes_through_its_colours(tmp_path, transparency):
    rgb = np.stack([_smooth(5), _smooth(6), _smooth(7)], -1)
    pal = Image.fromarray(np.round(rgb * 255).astype(np.uint8)).quantize(64)
    p = tmp_path / "p.png"
    pal.save(p, transparency=0) if transparency else pal.save(p)
    with Image.open(p) as im:
        assert im.mode == "P" and ("transparency" in im.info) == transparency
    colours = np.asarray(pal.getpalette(), np.uint8).reshape(-1, 3)
    want = _luma(colours[np.asarray(pal)])  # the colour each index stands for, transparent or not
    _compare(cache.decode_image(str(p), N), want, 0.51)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_dropped_keeping_the_colour_channels(tmp_path, mode):
    rgb = np.round(np.stack([_smooth(8), _smooth(9), _smooth(10)], -1) * 255).astype(np.uint8)
    alpha = np.random.default_rng(0).integers(0, 256, (N, N), dtype=np.uint8)
    alpha[: N // 2] = 0  # half the image fully transparent: still its grey levels, not black
    if mode == "RGBA":
        arr, want = np.dstack([rgb, alpha]), _luma(rgb)
    else:
        arr, want = np.dstack([rgb[..., 0], alpha]), rgb[..., 0].astype(np.float64)
    p = tmp_path / f"{mode}.png"
    Image.fromarray(arr, mode).save(p)
    assert Image.open(p).mode == mode
    _compare(cache.decode_image(str(p), N), want, 0.51)


def _cmyk() -> np.ndarray:
    return np.round(np.stack([_smooth(11), _smooth(12), _smooth(13), 0.6 * _smooth(14)], -1) * 255).astype(np.uint8)


def _cmyk_luma(cmyk: np.ndarray) -> np.ndarray:
    """CMYK → RGB (R = (255 - C)(255 - K)/255, ...), then luma."""
    c = cmyk.astype(np.float64)
    return _luma((255 - c[..., :3]) * (255 - c[..., 3:4]) / 255)


@pytest.mark.parametrize("fmt,max_err", [("TIFF", 1.01), ("JPEG", 12.0)])
def test_cmyk_converts_through_rgb(tmp_path, fmt, max_err):
    cmyk = _cmyk()
    p = tmp_path / f"cmyk.{fmt.lower()}"
    Image.fromarray(cmyk, "CMYK").save(p, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    with Image.open(p) as im:
        assert im.mode == "CMYK"
        stored = np.asarray(im)  # what the file holds after JPEG's loss: the exact reference
    got = cache.decode_image(str(p), N)
    assert np.abs(got - _cmyk_luma(stored)).max() <= 1.01
    _compare(got, _cmyk_luma(cmyk), max_err)  # and close to the image that was saved


def test_high_bit_depth_resizes_after_scaling(tmp_path):
    v = np.round(_smooth(15, 128) * 65535).astype(np.uint16)
    p = tmp_path / "big16.png"
    Image.fromarray(v).save(p)
    want = np.asarray(Image.fromarray((v / 257.0).astype(np.float32), "F").resize((N, N), Image.Resampling.BILINEAR))
    got = cache.decode_image(str(p), N)
    assert np.abs(got - want).max() <= 0.51 and got.max() >= 250


def _as_before(path: str, size: int) -> np.ndarray:
    """decode_image before the range-aware decoding: the behaviour 8-bit files must keep."""
    with Image.open(path) as im:
        im.draft("L", (size, size))
        im = im.convert("L")
        if im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(im, dtype=np.uint8)


@pytest.mark.parametrize("mode", ["L", "RGB"])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_ordinary_8bit_files_decode_exactly_as_before(tmp_path, mode, fmt):
    rng = np.random.default_rng(1)
    arr = np.round(_smooth(16, 300) * 200 + rng.integers(0, 50, (300, 300))).astype(np.uint8)
    if mode == "RGB":
        arr = np.dstack([arr, np.roll(arr, 7, 0), np.roll(arr, 9, 1)])
    p = tmp_path / f"x.{fmt.lower()}"
    Image.fromarray(arr, mode).save(p, format=fmt)
    for size in (32, 64, 300):  # JPEG draft scales (1/8 ... 1/2) and none
        assert np.array_equal(cache.decode_image(str(p), size), _as_before(str(p), size))


def test_real_kermany_jpegs_decode_exactly_as_before(kermany_root):
    paths = sorted((kermany_root / "train" / "NORMAL").glob("*.jpeg"))[:5]
    paths += sorted((kermany_root / "train" / "PNEUMONIA").glob("*.jpeg"))[:5]
    for p in paths:
        for size in (64, 224):
            assert np.array_equal(cache.decode_image(str(p), size), _as_before(str(p), size))
