import numpy as np

from pneumo_ray.data import sources
from pneumo_ray.data.split import patient_grouped_split


def _train(kermany_root):
    m = sources.kermany_manifest(kermany_root).manifest
    return m[m.split == "train"].reset_index(drop=True)


def test_real_holdout_is_patient_disjoint_stratified_and_20_percent(kermany_root):
    m = _train(kermany_root)
    tr, va = patient_grouped_split(m.label, m.patient, 0.2, seed=0)
    assert len(tr) + len(va) == len(m) == 5216
    assert set(tr).isdisjoint(va)
    assert set(m.patient[tr]).isdisjoint(set(m.patient[va]))
    # patient = person number + category: personN_bacteria and personN_virus may fall on different sides
    assert (m.patient[tr].nunique(), m.patient[va].nunique()) == (2919, 735)
    for cls in (0, 1):
        frac = (m.label[va] == cls).sum() / (m.label == cls).sum()
        assert abs(frac - 0.2) < 0.01, frac


def test_same_seed_same_split_other_seed_other_split(kermany_root):
    m = _train(kermany_root)
    a = patient_grouped_split(m.label, m.patient, 0.2, seed=3)
    b = patient_grouped_split(m.label, m.patient, 0.2, seed=3)
    c = patient_grouped_split(m.label, m.patient, 0.2, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], c[1])


def test_many_images_of_one_patient_never_split():
    labels = np.array([1] * 10 + [0, 0, 1, 1, 0, 1])
    patients = np.array(["p"] * 10 + ["a", "b", "c", "d", "e", "f"])
    for seed in range(20):
        tr, va = patient_grouped_split(labels, patients, 0.25, seed)
        assert not set(patients[tr]) & set(patients[va])
