import ast
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pneumo_ray.data.cache import decode_image
from pneumo_ray.data.study_data import synthetic_set
from pneumo_ray.train import augment as augment_module
from pneumo_ray.train import fastwarp
from pneumo_ray.train.augment import Augment, Normalize, augment_opencv, augment_torch, to_float

ROOT = Path(__file__).resolve().parents[1]

# A CPU path (OpenCV, C kernel) against torch's grid_sample on the same maps, in [0, 1] pixel units
# (divide by sd for normalized outputs). Measured on noise, the hardest case, at 224 px: OpenCV max
# 3.5e-5, mean 2.6e-6 (its coordinates are float32 sums; torch's too, in another order); kernel 7e-6.
MAX_DIFF, MEAN_DIFF = 1e-4, 1e-5


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
    # the flip alone is exact: integer sampling positions, weights 0 and 1
    assert all(torch.equal(f, x) or torch.equal(f, x.flip(-1)) for f, x in zip(flipped, batch))
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


# --- the CPU paths (C kernel, OpenCV) against the definition (torch's grid_sample) ---


@pytest.fixture
def kernel_on(monkeypatch):
    """The C kernel, required wherever a C compiler is (else the comparisons compare OpenCV twice)."""
    monkeypatch.delenv("PNEUMO_RAY_NO_FASTWARP", raising=False)
    if fastwarp.kernel() is None:
        assert fastwarp.compiler() is None, "a C compiler is installed but the fast augmentation kernel did not build"
        pytest.skip("no C compiler: the fast augmentation kernel is unavailable")


@pytest.fixture(params=["kernel", "opencv"])
def cpu_path(request, monkeypatch):
    """Augment's CPU path under test, with a spy recording which implementation produced each result."""
    if request.param == "kernel":
        request.getfixturevalue("kernel_on")
    else:
        monkeypatch.setenv("PNEUMO_RAY_NO_FASTWARP", "1")
    used = []
    for name, module in (("kernel", fastwarp), ("opencv", augment_module)):
        attr = "augment" if name == "kernel" else "augment_opencv"
        real = getattr(module, attr)
        monkeypatch.setattr(module, attr, lambda *a, real=real, name=name: _record(used, name, real(*a)))
    monkeypatch.setattr(augment_module, "augment_torch", lambda *a: _record(used, "torch", augment_torch(*a)))
    return request.param, used


def _record(used, name, out):
    if out is not None:
        used.append(name)
    return out


def _images(size, tmp_path_factory):
    """Smooth phantoms plus pure noise (every pixel differs from its neighbours: the hardest case)."""
    s = synthetic_set("target_train", size, tmp_path_factory.mktemp("c"), n=6)
    noise = torch.rand(4, 1, size, size, generator=torch.Generator().manual_seed(size))
    return torch.cat([to_float(torch.from_numpy(s.batch(np.arange(6)))), noise])


def _assert_close(out, ref, sd, what):
    assert out.shape == ref.shape and out.dtype == ref.dtype
    diff = (out - ref).abs() * sd  # in [0, 1] pixel units
    assert diff.max().item() < MAX_DIFF and diff.mean().item() < MEAN_DIFF, (what, diff.max().item())


@pytest.mark.parametrize("size", [32, 64, 224])
def test_cpu_path_equals_torch_path(cpu_path, tmp_path_factory, size):
    path, used = cpu_path
    x = _images(size, tmp_path_factory)
    for strength in (0.1, 0.5, 1.0):
        for hflip in (False, True):
            for norm in (None, Normalize(0.45, 0.2)):
                aug = Augment(strength, hflip)
                out = aug(x, torch.Generator().manual_seed(7), norm)
                theta, contrast, brightness = aug.draw(len(x), torch.Generator().manual_seed(7), x.device, x.dtype)
                mu, sd = (norm.mean, norm.std) if norm else (0.0, 1.0)
                ref = augment_torch(x, theta, contrast, brightness, mu, sd)
                _assert_close(out, ref, sd, (path, size, strength, hflip, norm))
    assert used == [path] * 12  # every CPU float32 batch took the path under test, never grid_sample


def test_cpu_paths_on_real_chest_xrays(kermany_root, monkeypatch):
    """Real 224 px radiographs (smooth, unlike noise): each path agrees with grid_sample far inside the bound."""
    files = sorted((kermany_root / "train" / "PNEUMONIA").glob("*.jpeg"))[:4]
    files += sorted((kermany_root / "train" / "NORMAL").glob("*.jpeg"))[:4]
    x = to_float(torch.from_numpy(np.stack([decode_image(str(f), 224) for f in files])))
    aug, norm = Augment(1.0, hflip=True), Normalize(0.48, 0.24)
    params = aug.draw(len(x), torch.Generator().manual_seed(0), x.device, x.dtype)
    ref = augment_torch(x, *params, norm.mean, norm.std)
    outs = {"opencv": augment_opencv(x, *params, norm.mean, norm.std)}
    if fastwarp.kernel() is not None:
        outs["kernel"] = fastwarp.augment(x, *params, norm.mean, norm.std)
    for path, out in outs.items():
        diff = (out - ref).abs() * norm.std
        assert diff.max().item() < MAX_DIFF / 2 and diff.mean().item() < MEAN_DIFF / 5, (path, diff.max().item())


def test_env_var_and_failed_build_take_the_opencv_path(monkeypatch, caplog, batch):
    monkeypatch.setenv("PNEUMO_RAY_NO_FASTWARP", "1")
    assert fastwarp.kernel() is None
    calls = []
    monkeypatch.setattr(augment_module, "augment_opencv", lambda *a: calls.append(1) or augment_opencv(*a))
    ref = Augment(0.6)(batch, torch.Generator().manual_seed(2))
    assert calls == [1]
    # a failed build: one warning, then OpenCV, the same numbers
    monkeypatch.delenv("PNEUMO_RAY_NO_FASTWARP")
    monkeypatch.setattr(fastwarp, "_kernel", None)
    monkeypatch.setattr(fastwarp, "_failed", False)

    def broken():
        raise RuntimeError("gcc failed: simulated")

    monkeypatch.setattr(fastwarp, "load_private_build", broken)
    with caplog.at_level(logging.WARNING, logger="pneumo_ray.train.fastwarp"):
        a = Augment(0.6)(batch, torch.Generator().manual_seed(2))
        b = Augment(0.6)(batch, torch.Generator().manual_seed(2))
    assert fastwarp.kernel() is None and calls == [1, 1, 1]
    assert len(caplog.records) == 1 and "simulated" in caplog.records[0].getMessage()  # warned once, not per call
    assert torch.equal(a, ref) and torch.equal(b, ref)


def test_strength_zero_flip_is_exact_on_both_paths(cpu_path, batch):
    flipped = Augment(0.0, hflip=True)(batch, torch.Generator().manual_seed(0))
    assert all(torch.equal(f, x) or torch.equal(f, x.flip(-1)) for f, x in zip(flipped, batch))
    assert torch.equal(Augment(0.0)(batch, torch.Generator().manual_seed(0)), batch)


def _reference(x, theta, contrast, brightness, mu, sd):
    """The torch definition, written out: grid_sample on affine_grid, border padding, align_corners=False."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    c, b = contrast.view(-1, 1, 1, 1), brightness.view(-1, 1, 1, 1)
    y = (out * c + out.mean(dim=(1, 2, 3), keepdim=True) * (1 - c) + b - mu) / sd
    return y.clamp((0 - mu) / sd, (1 - mu) / sd)


THETAS = torch.tensor(
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


def _implementations():
    """The CPU implementations present here: OpenCV always, the C kernel where it builds."""
    found = {"opencv": augment_opencv}
    if fastwarp.kernel() is not None:
        found["kernel"] = fastwarp.augment
    else:
        assert fastwarp.compiler() is None, "a C compiler is installed but the fast augmentation kernel did not build"
    return found


@pytest.mark.parametrize("path", ["opencv", "kernel"])
def test_at_borders_and_non_square(path):
    """Transforms that sample far outside the image (border padding repeats the edge pixels: OpenCV's
    BORDER_REPLICATE), exact edges, mirrors and a 90° turn, on a non-square image."""
    implementation = _implementations().get(path) or pytest.skip("no C compiler: no kernel")
    x = torch.rand(8, 1, 37, 53, generator=torch.Generator().manual_seed(0))
    contrast = torch.tensor([1.0, 0.8, 1.2, 1.0, 0.75, 1.25, 1.1, 0.9])
    brightness = torch.tensor([0.0, 0.1, -0.1, 0.05, 0.0, -0.05, 0.15, 0.0])
    out = implementation(x, THETAS, contrast, brightness, 0.45, 0.2)
    _assert_close(out, _reference(x, THETAS, contrast, brightness, 0.45, 0.2), 0.2, "borders")
    assert torch.allclose(out[0], (x[0] - 0.45) / 0.2, atol=1e-5)  # identity: untouched pixels
    assert torch.allclose(out[1], (x[1].flip(-1) * 0.8 + x[1].mean() * 0.2 + 0.1 - 0.45) / 0.2, atol=1e-5)
    corner = (x[7, 0, 0, -1] - 0.45) / 0.2  # x → +inf, y → -inf: the top-right pixel, everywhere
    assert torch.allclose(out[7], corner.expand(1, 37, 53), atol=1e-5)


def test_opencv_channels_and_layout():
    """Several channels (one map per image), a non-contiguous input, and a 1-pixel-wide image."""
    x = torch.rand(8, 3, 21, 17, generator=torch.Generator().manual_seed(1))
    contrast, brightness = torch.linspace(0.8, 1.2, 8), torch.linspace(-0.1, 0.1, 8)
    ref = _reference(x, THETAS, contrast, brightness, 0.5, 0.25)
    _assert_close(augment_opencv(x, THETAS, contrast, brightness, 0.5, 0.25), ref, 0.25, "3 channels")
    strided = torch.rand(8, 1, 17, 42)[..., ::2]
    out = augment_opencv(strided, THETAS, contrast, brightness, 0.5, 0.25)
    _assert_close(out, _reference(strided, THETAS, contrast, brightness, 0.5, 0.25), 0.25, "strided")
    thin = torch.rand(8, 1, 9, 1)
    _assert_close(
        augment_opencv(thin, THETAS, contrast, brightness, 0.0, 1.0),
        _reference(thin, THETAS, contrast, brightness, 0.0, 1.0),
        1.0,
        "thin",
    )


@pytest.mark.parametrize("path", ["opencv", "kernel"])
def test_reads_only_inside_the_image(path):
    """The memory right after the batch holds NaN: a read past the last row or column would carry it
    into the output (0 · NaN is NaN)."""
    implementation = _implementations().get(path) or pytest.skip("no C compiler: no kernel")
    storage = torch.full((2 * 9 * 11 + 64,), float("nan"))
    x = storage[: 2 * 9 * 11].view(2, 1, 9, 11)
    x.copy_(torch.rand(2, 1, 9, 11, generator=torch.Generator().manual_seed(0)))
    theta = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [[0.5, 0.0, 3.0], [0.0, 0.5, 3.0]]])
    out = implementation(x, theta, torch.ones(2), torch.zeros(2), 0.0, 1.0)
    assert torch.isfinite(out).all()
    assert torch.allclose(out[0], x[0], atol=1e-6) and torch.allclose(out[1], x[1, :, -1:, -1:].expand(1, 9, 11))


def test_other_dtypes_take_the_torch_path(batch):
    x = batch.double()
    out = Augment(0.6)(x, torch.Generator().manual_seed(2))
    assert out.dtype == torch.float64
    ref = augment_torch(x, *Augment(0.6).draw(len(x), torch.Generator().manual_seed(2), x.device, x.dtype), 0.0, 1.0)
    assert torch.equal(out, ref)


# --- native code: only the kernel's own private build is ever loaded ---

# The file name the old loader of train/fastwarp.py used on x86-64 for the current _warp.c: it
# loaded `<cache>/fastwarp/warp-<hash>.so` whenever the file existed, whoever had written it.
OLD_NAMES = ["fastwarp/warp-bc6e6d882da17f89.so", "fastwarp/warp-0000000000000000.so", "fastwarp/warp.so"]
PLAUSIBLE = ["warp.so", "_warp.so", "libwarp.so", "fastwarp.so", "augment.so", "fastwarp/_warp.so"]

PLANTED_C = """
#include <stdio.h>
__attribute__((constructor)) static void planted(void) {
    FILE *f = fopen("%s", "a");
    if (f) { fputs("loaded\\n", f); fclose(f); }
}
int augment_f32(void) { return 0; }
"""

CHILD = """
import json, os, sys, torch
from pneumo_ray.train import fastwarp
from pneumo_ray.train.augment import Augment, Normalize
import pneumo_ray.train.loop, pneumo_ray.train.protocol  # everything a CPU training run imports
x = torch.rand(8, 1, 64, 64)
for strength, hflip in ((0.5, False), (1.0, True)):
    Augment(strength, hflip)(x, torch.Generator().manual_seed(0), Normalize())
cache = os.path.realpath(os.environ["PNEUMO_RAY_CACHE"])
mapped = sorted({line.split()[-1] for line in open("/proc/self/maps") if len(line.split()) >= 6})
bad = [m for m in mapped if m.startswith(cache) or m.startswith(os.getcwd())]
print(json.dumps({"mapped": bad, "kernel": fastwarp.kernel() is not None, "cache": os.listdir(cache)}))
"""


def test_a_planted_library_is_never_loaded(tmp_path):
    """Shared objects whose constructor writes a marker file, planted where the old loader looked
    (PNEUMO_RAY_CACHE/fastwarp/warp-<hash>.so) and at other plausible names in the cache and the
    working directory; a process that augments CPU batches (with the kernel, where gcc is) must
    neither map any of them nor run their constructor."""
    if shutil.which("gcc") is None:
        pytest.skip("no gcc to build the planted library (and no kernel to load one either)")
    if not Path("/proc/self/maps").exists():
        pytest.skip("needs Linux's /proc/self/maps to list the libraries a process mapped")
    cache, marker = tmp_path / "cache", tmp_path / "marker"
    src = tmp_path / "planted.c"
    src.write_text(PLANTED_C % marker)
    lib = tmp_path / "planted.so"
    subprocess.run(["gcc", "-shared", "-fPIC", str(src), "-o", str(lib)], check=True, capture_output=True)
    for name in OLD_NAMES + PLAUSIBLE:
        (cache / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(lib, cache / name)
        shutil.copy(lib, tmp_path / Path(name).name)  # and in the working directory
    before = sorted(p.relative_to(cache) for p in cache.rglob("*"))
    env = {k: v for k, v in os.environ.items() if k != "PNEUMO_RAY_NO_FASTWARP"}
    env |= {"PNEUMO_RAY_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [sys.executable, "-c", CHILD], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert seen["kernel"], "gcc is here, so the child should have used (and loaded) the kernel"
    assert seen["mapped"] == []  # nothing mapped from the cache or the working directory
    assert not marker.exists(), "a planted library's constructor ran"
    assert sorted(p.relative_to(cache) for p in cache.rglob("*")) == before  # and nothing written there
    # the plant itself works: loading it on purpose runs its constructor
    load = f"import ctypes; ctypes.CDLL({str(cache / OLD_NAMES[0])!r})"
    subprocess.run([sys.executable, "-c", load], check=True, timeout=60)
    assert marker.read_text() == "loaded\n"


def test_kernel_is_built_in_a_fresh_private_folder_then_removed(monkeypatch):
    if fastwarp.compiler() is None:
        pytest.skip("no C compiler")
    made, real = [], tempfile.mkdtemp

    def spy(*args, **kwargs):
        path = real(*args, **kwargs)
        made.append((Path(path), stat.S_IMODE(os.stat(path).st_mode), os.stat(path).st_uid))
        return path

    monkeypatch.setattr(fastwarp.tempfile, "mkdtemp", spy)
    first, second = fastwarp.load_private_build(), fastwarp.load_private_build()
    assert first.augment_f32 is not None and second.augment_f32 is not None
    assert len(made) == 2 and made[0][0] != made[1][0]  # a new folder each time: no path is reused
    assert all(mode == 0o700 and uid == os.getuid() for _, mode, uid in made)  # only this user can write there
    assert not any(path.exists() for path, _, _ in made)  # and nothing is left behind


NATIVE_LOADERS = {"ctypes", "cffi", "distutils", "setuptools", "torch.utils.cpp_extension", "numpy.ctypeslib"}
RUNS = {f"subprocess.{f}" for f in ("run", "Popen", "call", "check_call", "check_output")} | {"os.system", "os.popen"}
COMPILERS = {"gcc", "cc", "clang", "g++", "c++", "nvcc", "icc", "tcc"}


def _native_code_uses(source: str, name: str) -> list[str]:
    """`name:line: what` for each import of a native-code loader or builder, each library-loading
    call, and each subprocess call whose command is not a literal list led by a non-compiler."""
    found = []
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"{name}:{node.lineno}: import {n}" for n in names if n.split(".")[0] in NATIVE_LOADERS]
            found += [f"{name}:{node.lineno}: import {n}" for n in names if n in NATIVE_LOADERS and "." in n]
        elif isinstance(node, ast.Attribute) and node.attr in {"CDLL", "PyDLL", "LoadLibrary", "dlopen", "load_inline"}:
            found.append(f"{name}:{node.lineno}: {node.attr}")
        elif isinstance(node, ast.Call) and ast.unparse(node.func) in RUNS:
            cmd = node.args[0] if node.args else None
            head = cmd.elts[0] if isinstance(cmd, ast.List) and cmd.elts else None
            # pip run from wheels only (deploy/: --only-binary downloads, --no-index installs) builds nothing
            pip = isinstance(cmd, ast.List) and [ast.unparse(e) for e in cmd.elts[:3]] == [
                "sys.executable",
                "'-m'",
                "'pip'",
            ]
            if not pip and not (
                isinstance(head, ast.Constant) and isinstance(head.value, str) and head.value not in COMPILERS
            ):
                found.append(f"{name}:{node.lineno}: {ast.unparse(node)[:80]}")
    return found


def test_only_the_kernel_module_compiles_or_loads_native_code():
    """train/fastwarp.py is the one place (its private build is tested above); no other module may
    load a library, call a compiler or build an extension, and _warp.c is the only C shipped."""
    pkg = ROOT / "pneumo_ray"
    kernel_module = pkg / "train" / "fastwarp.py"
    found = [
        f for p in sorted(pkg.rglob("*.py")) if p != kernel_module for f in _native_code_uses(p.read_text(), p.name)
    ]
    assert found == [], "\n".join(found)
    assert _native_code_uses(kernel_module.read_text(), "fastwarp.py")  # the check does see the kernel's loader
    shipped = sorted(p.name for ext in ("*.c", "*.cc", "*.cpp", "*.so") for p in pkg.rglob(ext))
    assert shipped == ["_warp.c"]
    probe = 'import ctypes\nimport subprocess\nctypes.CDLL("x.so")\nsubprocess.run(["gcc", "x.c"])\n'
    found = sorted(f.split(": ")[1] for f in _native_code_uses(probe, "probe.py"))
    assert found == ["CDLL", "import ctypes", "subprocess.run(['gcc', 'x.c'])"]


def _reference_draw(aug: Augment, b: int, generator: torch.Generator, dtype: torch.dtype):
    """The parameters as drawn before they went to the device in one copy (seven copies of seven draws):
    the numbers a seed gave then, which it must still give on the CPU."""
    s = aug.strength

    def u(scale):
        return ((torch.rand(b, generator=generator, dtype=torch.float64) * 2 - 1) * scale).to(dtype)

    angle, zoom = u(np.radians(15.0 * s)), 1.0 + u(0.15 * s)
    shear, tx, ty = u(0.15 * s), u(0.2 * s), u(0.2 * s)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [torch.stack([cos, -sin + shear * cos, tx], 1), torch.stack([sin, cos + shear * sin, ty], 1)], 1
    )
    theta[:, :, :2] /= zoom.view(b, 1, 1)
    if aug.hflip:
        flip = torch.rand(b, generator=generator) < 0.5
        theta[:, :, 0] = torch.where(flip.view(b, 1), -theta[:, :, 0], theta[:, :, 0])
    brightness = u(0.15 * s)
    return theta, 1.0 + u(0.25 * s), brightness


@pytest.mark.parametrize("hflip", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_draw_gives_what_a_seed_gave(hflip, dtype):
    for seed, strength in [(0, 0.5), (7, 1.0), (123, 0.05)]:
        aug = Augment(strength, hflip)
        got = aug.draw(33, torch.Generator().manual_seed(seed), torch.device("cpu"), dtype)
        ref = _reference_draw(aug, 33, torch.Generator().manual_seed(seed), dtype)
        assert all(torch.equal(g, r) for g, r in zip(got, ref, strict=True))


class _HostToMeta(torch.overrides.TorchFunctionMode):
    """Counts the operations that turn host tensors into device tensors (the meta device stands in for
    a GPU on a machine without one): each such copy from pageable memory makes the host wait on CUDA."""

    def __init__(self) -> None:
        super().__init__()
        self.copies = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [a for a in args if isinstance(a, torch.Tensor)]
        if isinstance(out, torch.Tensor) and out.device.type == "meta" and any(a.device.type == "cpu" for a in inputs):
            self.copies += 1
        return out


@pytest.mark.parametrize("hflip", [False, True])
def test_parameters_reach_the_device_in_one_copy(hflip):
    """One training step's augmentation parameters go to the device as one tensor (they were seven
    `.to(device)` copies: 7 host waits per step on an H200)."""
    meta = torch.device("meta")
    with _HostToMeta() as mode:
        theta, contrast, brightness = Augment(0.5, hflip).draw(
            32, torch.Generator().manual_seed(0), meta, torch.float32
        )
    assert mode.copies == 1
    assert theta.shape == (32, 2, 3) and contrast.shape == brightness.shape == (32,)
    assert {t.device.type for t in (theta, contrast, brightness)} == {"meta"}


def test_one_copy_views_augment_as_the_tensors_do(batch):
    """The views of the one copied tensor (strided) give the torch path's result bit for bit."""
    params = Augment(0.8, hflip=True).draw(len(batch), torch.Generator().manual_seed(4), batch.device, batch.dtype)
    viewed = augment_module.in_one_copy(*params, torch.device("cpu"))
    assert viewed[1].stride() == (8,)  # really views of the packed [B, 8] tensor
    assert torch.equal(augment_torch(batch, *params, 0.4, 0.2), augment_torch(batch, *viewed, 0.4, 0.2))
