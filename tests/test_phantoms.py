"""Synthetic chest-X-ray phantoms: contract (shapes, determinism, n-independence, patients, class
balance), domain shift, intensity range, and "learnable but not trivial" (mean brightness alone
must not separate the classes; a nearest-class-mean classifier must, but far from perfectly)."""

import numpy as np
import pytest
from PIL import Image

from pneumo_ray.data.phantoms import DOMAINS, phantom_images, save_preview


def auc(scores, labels):
    """Rank-based ROC AUC (Mann-Whitney U), ties get their average rank."""
    scores, labels = np.asarray(scores, float), np.asarray(labels).astype(bool)
    _, inv, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = (ends - (counts - 1) / 2)[inv]  # average 1-based rank of each tie group
    n1, n0 = labels.sum(), (~labels).sum()
    return (ranks[labels].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)


def test_auc_helper():
    assert auc([0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1]) == 1.0
    assert auc([0.4, 0.3, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert auc([1, 1, 1, 1], [0, 1, 0, 1]) == 0.5
    assert auc([0.1, 0.3, 0.2, 0.4], [0, 0, 1, 1]) == 0.75


def block_mean(images, k):
    n, s, _ = images.shape
    return images.reshape(n, k, s // k, k, s // k).mean((2, 4))


@pytest.fixture(scope="module")
def sets():
    """Per domain: a train and a test set (different seeds) at 32 px, shared by several tests."""
    return {
        d: (phantom_images(800, 32, domain=d, seed=101), phantom_images(800, 32, domain=d, seed=102)) for d in DOMAINS
    }


@pytest.mark.parametrize("size", [16, 32, 64, 224])
def test_shapes_dtypes_and_content(size):
    n = 3 if size == 224 else 9
    images, labels, patients = phantom_images(n, size)
    assert images.shape == (n, size, size) and images.dtype == np.uint8
    assert labels.shape == (n,) and labels.dtype == np.int64 and set(labels) <= {0, 1}
    assert patients.shape == (n,) and patients.dtype == np.int64
    assert patients[0] == 0 and np.all(np.diff(patients) >= 0)  # consecutive grouping
    assert images.reshape(n, -1).std(1).min() > 20  # real structure, not a flat frame


def test_empty_and_invalid():
    images, labels, patients = phantom_images(0, 32)
    assert images.shape == (0, 32, 32) and labels.shape == (0,) and patients.shape == (0,)
    with pytest.raises(ValueError):
        phantom_images(2, 32, domain="adult")
    with pytest.raises(ValueError):
        phantom_images(2, 32, seed=-1)


@pytest.mark.parametrize("domain", DOMAINS)
def test_deterministic_and_seed_dependent(domain):
    a = phantom_images(12, 48, domain=domain, seed=7)
    b = phantom_images(12, 48, domain=domain, seed=7)
    for x, y in zip(a, b):
        assert x.tobytes() == y.tobytes()
    c = phantom_images(12, 48, domain=domain, seed=8)
    assert np.mean(a[0] != c[0]) > 0.5  # a different seed gives different images
    other = DOMAINS[1 - DOMAINS.index(domain)]
    assert np.mean(a[0] != phantom_images(12, 48, domain=other, seed=7)[0]) > 0.5


@pytest.mark.parametrize("size", [32, 64, 100])
def test_image_i_does_not_depend_on_n(size):
    # n values chosen so that internal batches end at different places (partial last batches).
    full = phantom_images(37, size, seed=3)
    for n in (1, 5, 13, 24):
        part = phantom_images(n, size, seed=3)
        for x, y in zip(part, full):
            assert x.tobytes() == y[:n].tobytes()


def test_sizes_show_the_same_scene():
    small = phantom_images(10, 32, seed=4)[0].astype(float)
    for size in (64, 128):
        big = block_mean(phantom_images(10, size, seed=4)[0].astype(float), 32)
        corr = [np.corrcoef(b.ravel(), s.ravel())[0, 1] for b, s in zip(big, small)]
        assert min(corr) > 0.93


def test_patients_group_images_and_share_label_and_anatomy(sets):
    (images, labels, patients), _ = sets["target"]
    ids, counts = np.unique(patients, return_counts=True)
    assert counts.max() <= 3 and np.mean(counts >= 2) > 0.3  # several images per patient
    assert 1.4 < counts.mean() < 2.2
    for p in ids[counts >= 2]:
        assert len(set(labels[patients == p])) == 1  # label is patient-level
    # Shared anatomy: standardised images of one patient correlate more than unrelated ones.
    z = block_mean(images.astype(float), 16).reshape(len(images), -1)
    z = (z - z.mean(1, keepdims=True)) / z.std(1, keepdims=True)
    corr = z @ z.T / z.shape[1]
    same = patients[:, None] == patients[None, :]
    within = corr[same & ~np.eye(len(z), dtype=bool)].mean()
    between = corr[~same].mean()
    assert within > between + 0.03


@pytest.mark.parametrize("fraction", [0.74, 0.3])
def test_class_balance(fraction):
    labels = phantom_images(2000, 8, pneumonia_fraction=fraction)[1]
    assert abs(labels.mean() - fraction) < 0.05


def test_fraction_extremes_and_disease_twins():
    # The label draw does not shift any other draw, so fraction 1 vs 0 gives the same patients and
    # poses with and without disease: the difference is the disease alone.
    sick, ls, _ = phantom_images(60, 64, pneumonia_fraction=1.0)
    healthy, lh, _ = phantom_images(60, 64, pneumonia_fraction=0.0)
    assert ls.all() and not lh.any()
    diff = sick.astype(int) - healthy.astype(int)
    assert (diff.reshape(60, -1).mean(1) > 0).all()  # disease adds density (brighter)
    assert np.abs(diff[:, :4]).max() == 0 and np.abs(diff[:, -4:]).max() == 0  # neck / abdomen untouched


def test_domains_differ(sets):
    (t_img, _, _), _ = sets["target"]
    (s_img, _, _), _ = sets["source"]
    t_mean, s_mean = t_img.mean(0), s_img.mean(0)

    # Adult lungs are longer: more rows of an image-left lung column (x ~ -0.6 .. -0.3, below
    # the shoulders) are darker than halfway between the lung and the abdomen.
    def lung_rows(m):
        col = m[6:, 6:11].mean(1)
        return int(np.sum(col < (col.min() + col[-4:].mean()) / 2))

    assert lung_rows(s_mean) >= lung_rows(t_mean) + 3

    # Different exposure statistics: the pixel histograms differ clearly (KS distance).
    def cdf(x):
        return np.cumsum(np.bincount(x.ravel(), minlength=256)) / x.size

    assert np.abs(cdf(t_img) - cdf(s_img)).max() > 0.08


@pytest.mark.parametrize("domain", DOMAINS)
def test_intensity_range(domain, sets):
    (images, _, _), _ = sets[domain]
    m = images.mean(0)  # 32 px mean image
    assert 35 <= m[12:18, 6:10].mean() <= 100  # image-left lung field: dark
    assert 130 <= m[28:31, 12:20].mean() <= 235  # upper abdomen below the diaphragm: bright
    assert np.mean((images == 0) | (images == 255)) < 0.03  # little clipping


@pytest.mark.parametrize("domain", DOMAINS)
def test_mean_intensity_is_a_weak_cue(domain, sets):
    _, (images, labels, _) = sets[domain]
    a = auc(images.reshape(len(images), -1).mean(1), labels)
    assert 0.25 < a < 0.75


@pytest.mark.parametrize("domain", DOMAINS)
def test_learnable_but_not_trivial(domain, sets):
    """Nearest class mean on per-image standardised 16x16 images: clearly better than chance,
    far from perfect."""
    (tr, ltr, _), (te, lte, _) = sets[domain]

    def feats(x):
        f = block_mean(x.astype(float), 16).reshape(len(x), -1)
        return (f - f.mean(1, keepdims=True)) / f.std(1, keepdims=True)

    ftr, fte = feats(tr), feats(te)
    mu0, mu1 = ftr[ltr == 0].mean(0), ftr[ltr == 1].mean(0)
    score = ((fte - mu0) ** 2).sum(1) - ((fte - mu1) ** 2).sum(1)
    a = auc(score, lte)
    assert 0.57 < a < 0.99


def test_save_preview(tmp_path):
    path = save_preview(tmp_path / "p.png", n=6, size=32, domain="source", seed=1)
    with Image.open(path) as im:
        arr = np.asarray(im)
    assert arr.shape[1] == 3 * 32 and arr.shape[0] >= 2 * 32  # 3 x 2 grid with caption rows
    assert arr.std() > 20
