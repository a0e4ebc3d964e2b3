"""Patient-grouped, class-stratified hold-out (the seed's 20% validation split, done by patient)."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def patient_grouped_split(
    labels: ArrayLike, patients: ArrayLike, val_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Return (train_index, val_index): no patient on both sides, each class ≈ val_fraction in val.

    Patients are stratified by their majority label; within each class, patients are visited in a
    seeded random order and moved to validation until the class's image quota is met, so the
    image-level class ratio is kept even when patients have different numbers of images.
    Same (labels, patients, val_fraction, seed) → same split.
    """
    labels = np.asarray(labels)
    patients = np.asarray(patients).astype(str)
    if labels.shape != patients.shape:
        raise ValueError("labels and patients must have the same length")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    uniq, inverse = np.unique(patients, return_inverse=True)
    counts = np.bincount(inverse)
    pos = np.bincount(inverse, weights=labels.astype(float))
    patient_label = (pos * 2 > counts).astype(int)  # majority label; ties count as NORMAL
    rng = np.random.default_rng(seed)
    val_patients = np.zeros(len(uniq), bool)
    for cls in np.unique(patient_label):
        members = np.flatnonzero(patient_label == cls)
        members = members[rng.permutation(len(members))]
        quota = val_fraction * counts[members].sum()
        taken = np.cumsum(counts[members])
        # take patients while the running total stays closest to the quota
        n = int(np.searchsorted(taken, quota))
        if n < len(members) and abs(taken[n] - quota) < abs((taken[n - 1] if n else 0) - quota):
            n += 1
        val_patients[members[:n]] = True
    is_val = val_patients[inverse]
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)
