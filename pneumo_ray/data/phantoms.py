"""Synthetic chest-X-ray phantoms: the embedded default data set and the unit-test fixture.

Design. Each image is an analytic density map D(x, y) in normalised body coordinates ([-1, 1]^2,
patient's left on the image right): a soft-tissue thorax whose thickness falls off towards the
edges (shoulders, neck, optional arms), two dark lung fields (rounded apices, diaphragm domes),
a cardiomediastinal silhouette that hides the lung behind it, trachea, spine, clavicles, hila,
vascular texture and ribs. Ribs are damped Fourier series in rib phase, and every edge is at
least a pixel wide, so shapes anti-alias instead of breaking up: the functions are evaluated at
the requested size's pixel centres, and 32, 64, 128 and 224 px show the same scene. Display =
film curve(offset + contrast * D + illumination ramp), then rotation, then grain.

Randomness. Patient p owns 1-3 consecutive images and one generator, rng([seed, domain, p]):
anatomy, label, disease and texture first, then each image's pose and exposure, then grain.
So image i depends on (seed, domain, i, size) but never on n. Disease is patient-level extra
lung density: target (pediatric) = fissure-bounded lobar consolidation or patchy perihilar
interstitial opacity; source (adult, COVID-like) = bilateral peripheral lower-zone ground
glass, sometimes with a focal consolidation. Severity runs down to subtle, and exposure varies
far more than disease moves the mean brightness (mean-intensity AUC ~0.5).

Speed (vectorised float32 numpy, one core; CPU time, best of 5, measured while other jobs
loaded this 2-core VM): ~4600 img/s at 32 px, ~2200 at 64 px, ~690 at 128 px, ~290 at 224 px.
"""

from __future__ import annotations

import functools
import math
import os

import numpy as np

DOMAINS = ("target", "source")
VERSION = 2  # bump when the rendered pixels change (datasets.py keys its cache on it)

_F = np.float32
_PIXELS_PER_CHUNK = 1 << 15  # pixels per batch: amortises numpy call overhead, arrays stay in cache

# Patient-level anatomy as (mean, sd); sampled as mean + sd * z with z clipped to +-2.5 so that
# no body comes out absurd. Target = pediatric AP: round thorax, large heart (CTR ~0.55), short
# lungs. Source = adult PA: broader body filling the frame, longer lungs, smaller heart.
_ANATOMY = {
    "target": dict(
        body_w=(0.78, 0.04),
        arm_w=(0.11, 0.02),
        body_top=(-0.50, 0.05),
        neck_w=(0.24, 0.02),
        tissue=(0.50, 0.04),
        apex=(-0.62, 0.04),
        base=(0.40, 0.05),
        lat=(0.70, 0.03),
        med=(0.10, 0.015),
        ua=(0.30, 0.02),
        dome=(0.14, 0.03),
        dome_asym=(0.04, 0.02),
        depth=(0.32, 0.03),
        heart_top=(-0.10, 0.04),
        heart_r=(0.50, 0.03),
        heart_l=(0.26, 0.02),
        knob=(0.05, 0.015),
        heart_d=(0.03, 0.01),
        med_w=(0.11, 0.012),
        rib_top=(-0.74, 0.03),
        rib_sp=(0.115, 0.008),
        rib_curve=(0.95, 0.08),
        rib_amp=(0.06, 0.012),
        clav_y=(-0.56, 0.03),
        spine_d=(0.04, 0.01),
    ),
    "source": dict(
        body_w=(0.92, 0.04),
        arm_w=(0.13, 0.02),
        body_top=(-0.62, 0.05),
        neck_w=(0.26, 0.02),
        tissue=(0.56, 0.05),
        apex=(-0.74, 0.04),
        base=(0.58, 0.05),
        lat=(0.76, 0.03),
        med=(0.10, 0.015),
        ua=(0.33, 0.02),
        dome=(0.12, 0.03),
        dome_asym=(0.04, 0.02),
        depth=(0.36, 0.03),
        heart_top=(0.04, 0.04),
        heart_r=(0.42, 0.03),
        heart_l=(0.22, 0.02),
        knob=(0.06, 0.015),
        heart_d=(0.03, 0.01),
        med_w=(0.10, 0.012),
        rib_top=(-0.86, 0.03),
        rib_sp=(0.135, 0.008),
        rib_curve=(1.05, 0.08),
        rib_amp=(0.055, 0.012),
        clav_y=(-0.68, 0.03),
        spine_d=(0.05, 0.01),
    ),
}

# Image-level pose and exposure. Exposure spread is deliberately larger than the mean-brightness
# change caused by disease (checked by the mean-intensity AUC test).
_IMAGE = {
    "target": dict(
        rot=(0.0, 0.05),
        tx=(0.0, 0.04),
        ty=(0.02, 0.04),
        scale=(1.0, 0.05),
        offset=(0.10, 0.05),
        contrast=(1.0, 0.13),
        gamma=(1.0, 0.13),
        grain=(0.025, 0.006),
        gx=(0.0, 0.04),
        gy=(0.0, 0.04),
        qx=(0.0, 0.05),
        qy=(0.0, 0.05),
        sev_jit=(1.0, 0.08),
    ),
    "source": dict(
        rot=(0.0, 0.03),
        tx=(0.0, 0.03),
        ty=(0.0, 0.03),
        scale=(1.0, 0.04),
        offset=(0.04, 0.04),
        contrast=(1.15, 0.12),
        gamma=(0.85, 0.10),
        grain=(0.012, 0.004),
        gx=(0.0, 0.03),
        gy=(0.03, 0.03),
        qx=(0.0, 0.04),
        qy=(0.0, 0.04),
        sev_jit=(1.0, 0.08),
    ),
}
_COARSE, _FINE = 8, 24  # knots of the smooth random fields (patchy disease; texture)
_ROT_STEP, _ROT_MAX = math.radians(0.5), 12  # rotation quantised to 0.5 deg (cached warp tables), +-6 deg


@functools.cache
def _spec_arrays(domain, which):
    spec = (_ANATOMY if which == "anatomy" else _IMAGE)[domain]
    return tuple(spec), np.array([v[0] for v in spec.values()]), np.array([v[1] for v in spec.values()])


def _draw(rng, domain, which):
    keys, mean, sd = _spec_arrays(domain, which)
    vals = mean + sd * np.clip(rng.standard_normal(len(keys)), -2.5, 2.5)
    return dict(zip(keys, vals.tolist()))  # python floats: numpy scalar maths is slow


@functools.lru_cache(maxsize=32)
def _upsampler(size, knots):
    """Rows: Gaussian-RBF weights from `knots` grid points to pixel centres, scaled so the
    upsampled field of iid N(0,1) knots has unit variance. Knots overhang the image edge."""
    c = (np.arange(size) + 0.5) / size * 2 - 1
    k = np.linspace(-1.15, 1.15, knots)
    h = (k[1] - k[0]) * 0.8
    w = np.exp(-(((c[:, None] - k[None, :]) / h) ** 2))
    w /= w.sum(1, keepdims=True)
    w /= np.sqrt((w**2).sum(1).mean())
    return w.astype(_F)


def _field(g, size):
    w = _upsampler(size, g.shape[0])
    return w @ g.astype(_F) @ w.T


@functools.lru_cache(maxsize=32)  # <= 25 angles; 16 bytes per pixel each
def _rotation(size, k):
    """Bilinear warp table rotating an image by k * _ROT_STEP about its centre (edges clamp):
    top-left source index (intp: no conversion per use) and the two interpolation fractions."""
    th = k * _ROT_STEP
    p = np.arange(size) - (size - 1) / 2
    X, Y = np.meshgrid(p, p)
    sx = np.clip(np.cos(th) * X + np.sin(th) * Y + (size - 1) / 2, 0, size - 1.001)
    sy = np.clip(np.cos(th) * Y - np.sin(th) * X + (size - 1) / 2, 0, size - 1.001)
    x0, y0 = sx.astype(np.intp), sy.astype(np.intp)
    return (y0 * size + x0).ravel(), (sx - x0).astype(_F).ravel(), (sy - y0).astype(_F).ravel()


def _patient(seed, dom, p, frac, size):
    """Patient p: anatomy, label, disease, texture, then pose/exposure/grain of each of its images.
    One generator per patient (cheaper than one per image) still makes image i independent of n;
    all scalars are drawn before the size-dependent grain, so every size shows the same scene."""
    domain = DOMAINS[dom]
    rng = np.random.default_rng([seed, dom, p])
    r = rng.random(14).tolist()
    P = _draw(rng, domain, "anatomy")
    n_img = 1 + (r[0] > 0.45) + (r[0] > 0.8)  # ~1.75 images per patient
    P["label"] = int(r[1] < frac)
    P["bubble"] = float(r[2] < 0.7)
    P["arms"] = 0.6 * (r[10] < 0.5)  # else raised out of the field
    sev = r[3]  # uniform: a share of cases is very subtle
    side = 1.0 if r[4] < 0.5 else -1.0
    lobe = int(r[5] * 3)  # 0 upper, 1 middle/lingula, 2 lower
    if domain == "target":
        focal = r[6] < 0.6
        P["a_focal"] = (0.15 + 0.30 * sev) * focal
        P["a_diff"] = (0.15 + 0.25 * sev) * (not focal)
        P["a_ggo"] = 0.0
    else:
        P["a_ggo"] = 0.10 + 0.22 * sev
        P["a_focal"] = (0.08 + 0.20 * sev) * (r[6] < 0.3)
        P["a_diff"] = 0.0
    if not P["label"]:
        P["a_focal"] = P["a_diff"] = P["a_ggo"] = 0.0
    # Focal blob centre: lobe picks the height in the lung, r[7] the position across it.
    t_c = (0.25, 0.55, 0.80)[lobe] + 0.08 * (r[8] - 0.5)
    prof = math.sqrt(min(max(t_c * (2.2 - 1.2 * t_c), 0.0), 1.0))
    lat_u, med_u = P["ua"] + (P["lat"] - P["ua"]) * prof, P["ua"] - (P["ua"] - P["med"]) * prof
    P["fx"] = side * (med_u + (lat_u - med_u) * (0.35 + 0.4 * r[7]))
    P["fy"] = P["apex"] + t_c * (P["base"] - P["apex"])
    P["frx"], P["fry"] = 0.14 + 0.14 * r[11], 0.14 + 0.14 * r[12]
    # Upper-lobe opacity stops at the horizontal fissure below it, middle lobe at the one above;
    # lower-lobe opacity fades out (silhouettes the diaphragm instead).
    P["fiss_s"] = (1.0, -1.0, 0.0)[lobe]
    P["fiss_y"] = P["fy"] + (0.6 * P["fry"], -0.6 * P["fry"], 0.0)[lobe]
    P["asym"] = 0.6 + 0.4 * r[9]  # bilateral disease is rarely symmetric
    P["coarse"] = _field(rng.standard_normal((_COARSE, _COARSE)), size)
    P["fine"] = _field(rng.standard_normal((_FINE, _FINE)), size)
    images = []
    for _ in range(n_img):
        im = _draw(rng, domain, "image")
        im["rot_k"] = min(max(round(im.pop("rot") / _ROT_STEP), -_ROT_MAX), _ROT_MAX)
        images.append({**P, **im})
    for im in images:  # grain: uniform deviates are several times cheaper than normal ones
        im["grain_u"] = rng.random((size, size), dtype=_F)
    return P["label"], images


def _bulge(s, peak, narrow):
    """Heart border profile over s in [0, 1] (top to diaphragm): eases out of the mediastinum
    (S-curve, no shelf), is widest at `peak`, and narrows by `narrow` towards the diaphragm."""
    up = np.sin(np.minimum(s / peak, 1) * (np.pi / 2)) ** 2
    down = np.maximum(s - peak, 0) / (1 - peak)
    return up - narrow * down * down


def _render(params, size):
    """params: one dict per image (patient and image keys merged). Returns uint8 [B, size, size].

    Shapes are evaluated in unrotated body coordinates, where x depends only on the column and
    y only on the row: most terms are 1-D ([B,1,W] or [B,H,1]) and only their combinations are
    2-D. Rotation is applied at the end by a cached bilinear warp. Constants that scale 2-D terms
    are folded into the 1-D factors, because every 2-D numpy op is a full pass over memory."""
    keys = [k for k, v in params[0].items() if isinstance(v, float)]
    mat = np.array([[p[k] for k in keys] for p in params], _F)
    A = {k: mat[:, j, None, None] for j, k in enumerate(keys)}
    coarse, fine = np.stack([p["coarse"] for p in params]), np.stack([p["fine"] for p in params])

    c = ((np.arange(size) + 0.5) / size * 2 - 1).astype(_F)
    isc = 1 / A["scale"]
    x = (c[None, None, :] - A["tx"]) * isc  # [B,1,W]
    y = (c[None, :, None] - A["ty"]) * isc  # [B,H,1]
    u, right = np.abs(x), (x > 0).astype(_F)
    ie = 1 / (0.02 + 2.0 / size * isc)  # inverse edge width: soft edges, never sharper than a pixel
    xe, ue, ye = x * ie, u * ie, y * ie

    def ramp(d):
        return np.clip(d * ie + 0.5, 0, 1)

    # Thorax: cylinder-like thickness sqrt(1 - (x/W)^2). Above body_top the outline runs out to
    # the shoulder tips and then slopes up into the neck; arms may hang beside the chest.
    sh = np.clip((y - A["body_top"] + 0.45) / 0.35, 0, 1)
    Wy = A["neck_w"] + (A["body_w"] + 0.1 * np.clip((A["body_top"] + 0.1 - y) / 0.2, 0, 1) - A["neck_w"]) * sh
    thick = np.sqrt(np.clip(1 - (x * x) * (1 / (Wy * Wy)), 0, 1))
    ua = (u - A["body_w"] - 0.01 - A["arm_w"]) / A["arm_w"]
    arm = (A["tissue"] * A["arms"]) * np.sqrt(np.clip(1 - ua * ua, 0, 1))
    D = A["tissue"] * thick + arm * ramp(y - A["body_top"] + 0.2)

    # Lungs: half-widths grow from a rounded apex; dome-shaped bases, image-left dome higher.
    # Edges ramp inwards from the boundary so the apex closes (both ramps are 0 where L == M).
    t = (y - A["apex"]) / (A["base"] - A["apex"])
    prof = np.sqrt(np.clip(t * (2.2 - 1.2 * t), 0, 1))
    L = (A["ua"] + (A["lat"] - A["ua"]) * prof) * ie
    M = (A["ua"] - (A["ua"] - A["med"]) * prof) * ie
    uc, hw = (A["lat"] + A["med"]) / 2, (A["lat"] - A["med"]) / 2
    yb = (A["base"] + A["dome_asym"] * right - A["dome"] * np.clip(1 - ((u - uc) / hw) ** 2, 0, 1)) * ie
    lung = np.clip(L - ue, 0, 1) * np.clip(ue - M, 0, 1) * np.clip(yb - ye, 0, 1)

    # Cardiomediastinal silhouette, bounded by one border curve per side, both functions of y
    # only: a straight mediastinum (SVC / trachea) above, the aortic knob, then the heart bulging
    # to the image right (left ventricle) and less to the left (right atrium) down to the
    # diaphragm. Soft tissue that hides most lung behind it; seen only where it meets air.
    hs = np.clip((y - A["heart_top"]) / (A["base"] + A["dome_asym"] - A["heart_top"]), 0, 1)
    xr = A["med_w"] + 0.02 + (A["heart_r"] - A["med_w"]) * _bulge(hs, 0.65, 0.3)
    q = (y - A["heart_top"] + 0.1) / 0.07
    xr += A["knob"] * np.sqrt(np.clip(1 - q * q, 0, 1))
    xl = 0.02 - A["med_w"] - (A["heart_l"] - A["med_w"]) * _bulge(hs, 0.6, 0.25)
    top = ramp(y - A["apex"] + 0.05)
    cover = np.clip(xr * ie + 0.5 - xe, 0, 1) * np.clip(xe - (xl * ie - 0.5), 0, top)
    tc = np.clip(t, 0, 1)
    lungv = lung * (1 - 0.85 * cover)  # visible (aerated, not behind the heart) lung
    D -= (lungv * (A["depth"] * (1 - 0.2 * tc * tc))) * thick
    D += (cover * (A["heart_d"] * ramp(A["base"] - y))) * thick
    # Trachea: an air column in the upper mediastinum down to the carina.
    D -= ramp(0.035 - np.abs(x - 0.01)) * (0.06 * ramp(A["heart_top"] - 0.12 - y))

    # Hila and vascular markings: the lungs are not uniformly black.
    hy = y - (A["heart_top"] - 0.02)
    D += (0.06 * np.clip(1 - ((u - 0.2) / 0.1) ** 2, 0, 1)) * np.clip(1 - (hy / 0.16) ** 2, 0, 1)
    D += (lung * fine) * (0.03 * (1.2 - prof))

    # Disease: extra density inside the lungs.
    P = None
    if np.any(A["a_focal"]):
        fx, fy = (x - A["fx"]) / A["frx"], (y - A["fy"]) / A["fry"]
        # Dense plateau with a soft rim; the texture field makes the outline and density patchy.
        blob = np.clip((1.5 - 1.5 * fx * fx) - 1.5 * fy * fy + 0.5 * coarse, 0, 1)
        d_fiss = A["fiss_s"] * (A["fiss_y"] - y) + (1 - np.abs(A["fiss_s"]))  # > 0 on the lobe's side
        fiss = np.clip(d_fiss / (0.006 + 2.0 / size * isc) + 0.5, 0, 1)  # a fissure is a sharp edge
        P = blob * (A["a_focal"] * fiss)
    if np.any(A["a_diff"]):
        patch = np.clip(0.5 + 0.5 * coarse, 0.1, 1) * (0.5 + 0.5 * np.abs(fine))  # patchy + reticular
        perihilar = np.clip(1.3 - np.abs(u - 0.25) / 0.4, 0.4, 1)
        Q = patch * (A["a_diff"] * perihilar * (A["asym"] + (1 - A["asym"]) * right))
        P = Q if P is None else P + Q
    if np.any(A["a_ggo"]):
        s = 1 / (0.4 * np.maximum(L - M, 0.05 * ie))  # lateral fraction across the lung, from M
        periph = np.clip(ue * s - (M * s + 1), 0, 1)
        lower = A["a_ggo"] * np.clip((t - 0.35) / 0.35, 0, 1)
        Q = periph * np.clip(0.6 + 0.5 * coarse, 0.1, 1.4) * (lower * (A["asym"] + (1 - A["asym"]) * right))
        P = Q if P is None else P + Q
    if P is not None:
        # Fluid-filled lung is at most as dense as soft tissue, and disease behind the heart is
        # mostly hidden like the lung there.
        np.minimum(P * A["sev_jit"], A["depth"], out=P)
        P *= lungv * thick
        D += P

    # Ribs: posterior arcs rise slightly from the spine then fall laterally; fainter anterior ribs
    # fall medially. Each is a damped Fourier series in rib phase; the damping is a Gaussian pixel
    # blur, so at 32 px the ribs fade to a haze instead of aliasing into moire.
    tau = 2 * np.pi / A["rib_sp"]
    sv = 0.45 * (2.0 / size * isc) / A["rib_sp"]
    d1, d2 = np.exp(-2 * np.pi**2 * sv**2), np.exp(-8 * np.pi**2 * sv**2)
    c1 = np.cos((y - A["rib_top"]) * tau + (0.15 * u - A["rib_curve"] * u * u) * tau)
    ribs = (0.3 * d2 * c1 + 0.6 * d1) * c1
    ribs += np.cos((y - A["rib_top"] - 0.25) * (tau / 1.1) + (0.45 * tau / 1.1) * u) * (0.2 * d1)
    wx = A["rib_amp"] * ramp(A["lat"] + 0.06 - u) * ramp(u - 0.06)
    wy = np.clip((y - A["rib_top"]) / 0.06 + 0.5, 0, 1) * np.clip((A["base"] + 0.15 - y) / 0.1, 0, 1)
    ribs += 0.65 - 0.15 * d2  # mean rib density
    ribs *= (0.4 + 0.6 * lungv) * (wx * wy)
    if P is not None:
        ribs *= 1 - 0.7 * np.clip(P * 5, 0, 1)  # consolidation hides the ribs behind it
    D += ribs

    # Clavicles (oblique, rising laterally), spine with vertebral bodies, gastric bubble.
    dc = u - 0.07
    cy = (A["clav_y"] - 0.45 * dc + 0.2 * dc * dc) * ie
    D += np.clip((0.03 * ie + 0.5) - np.abs(ye - cy), 0, 1) * (0.07 * ramp(dc) * ramp(0.75 - u))
    sp = 0.095
    dv = np.exp(-2 * np.pi**2 * (0.45 * 2.0 / size * isc / sp) ** 2)
    D += (A["spine_d"] * ramp(0.055 - u)) * (0.7 + 0.3 * dv * np.cos(2 * np.pi / sp * y))
    gx, gy = (x - 0.33) / 0.07, (y - (A["base"] + A["dome_asym"] + 0.08)) / 0.045
    D -= np.clip((0.5 + 0.03 * ie) - (0.03 * ie) * gx * gx - (0.03 * ie) * gy * gy, 0, 1) * (0.08 * A["bubble"])

    # Exposure: linear response plus a smooth (quadratic) illumination ramp, then a cheap
    # gamma-like film curve v(1+k)/(1+kv) (k > 0 brightens mid-tones), rotation, grain.
    X, Y = c[None, None, :], c[None, :, None]
    img = D * A["contrast"] + ((A["offset"] + A["gx"] * X + A["qx"] * X * X) + (A["gy"] * Y + A["qy"] * Y * Y))
    np.clip(img, 0, 1, out=img)
    kg = 1 / A["gamma"] - 1
    img = img * (1 + kg) / (1 + kg * img)
    for j, p in enumerate(params):
        if p["rot_k"]:
            i, fx, fy = _rotation(size, p["rot_k"])
            f = img[j].ravel()
            a, b = f[i], f[i + 1]
            upper = a + fx * (b - a)
            i = i + size  # not in place: the table is shared (cache, threads)
            a, b = f[i], f[i + 1]
            lower = a + fx * (b - a)
            img[j] = (upper + fy * (lower - upper)).reshape(size, size)
    grain = np.stack([p["grain_u"] for p in params])
    grain *= A["grain"] * (255 * np.sqrt(12))  # uniform with sd A["grain"] (display units)
    img *= 255
    img += grain
    img += 0.5 - A["grain"] * (255 * np.sqrt(12) / 2)
    return np.clip(img, 0, 255, out=img).astype(np.uint8)


def phantom_images(
    n: int, size: int, *, domain: str = "target", seed: int = 0, pneumonia_fraction: float = 0.74
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (images uint8 [n, size, size], labels int64 [n] 0=NORMAL 1=PNEUMONIA, patients int64 [n]).

    Deterministic; image i depends only on (seed, domain, i, size, pneumonia_fraction), never on n.
    """
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    if n < 0 or size < 8 or seed < 0:
        raise ValueError("need n >= 0, size >= 8, seed >= 0")
    dom = DOMAINS.index(domain)
    images = np.empty((n, size, size), np.uint8)
    labels = np.empty(n, np.int64)
    patients = np.empty(n, np.int64)
    chunk = max(1, _PIXELS_PER_CHUNK // (size * size))
    p, queue, label = -1, [], 0
    for start in range(0, n, chunk):
        params = []
        for i in range(start, min(n, start + chunk)):
            if not queue:
                p += 1
                label, queue = _patient(seed, dom, p, pneumonia_fraction, size)
            params.append(queue.pop(0))
            labels[i], patients[i] = label, p
        images[start : start + len(params)] = _render(params, size)
    return images, labels, patients


def save_preview(
    path: str | os.PathLike, n: int = 16, size: int = 128, domain: str = "target", seed: int = 0
) -> str | os.PathLike:
    """Write a PNG grid of n phantoms with label and patient captions, for eyeballing."""
    from PIL import Image, ImageDraw

    imgs, labels, patients = phantom_images(n, size, domain=domain, seed=seed)
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    pad = 14
    sheet = Image.new("L", (cols * size, rows * (size + pad)), 255)
    draw = ImageDraw.Draw(sheet)
    for k in range(n):
        r, c = divmod(k, cols)
        sheet.paste(Image.fromarray(imgs[k]), (c * size, r * (size + pad) + pad))
        draw.text((c * size + 2, r * (size + pad) + 1), f"{'PNEU' if labels[k] else 'NORM'} p{patients[k]}", fill=0)
    sheet.save(path)
    return path
