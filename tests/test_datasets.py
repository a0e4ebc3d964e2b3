"""Study data: the real target sets, and one exclusion rule (name, patient, content against the held-out
sets) for pre-training and fine-tuning alike."""

import numpy as np
from PIL import Image

from pneumo_ray.config.data import DataSpec
from pneumo_ray.data import leakage as audit
from pneumo_ray.data import sources
from pneumo_ray.data.study_data import load_study_data


def _shares(a, held: list) -> np.ndarray:
    """Per image of `a`: shares a name, patient or content with a held-out set (the rule both exclusions use)."""
    f = audit.leakage_flags(a, held)
    return (f["by_name"] | f["by_patient"] | f["by_content"]).to_numpy()


def test_real_study_data_leakage_free_source(kermany_root, coronahack_root, cache_dir):
    """Pre-training never sees a file name or patient of the target's validation or test sets, and
    the target sets are the real counts. (CoronaHack TRAIN holds every Kermany train image.)"""
    d = load_study_data(
        DataSpec(kermany_root, coronahack_root, image_size=32, split_seed=0, cache_dir=cache_dir), quiet=True, log=None
    )
    assert len(d.train) + len(d.val) == 5216 and len(d.test) == 624
    held = set(d.val.manifest.name) | set(d.test.manifest.name)
    held_patients = set(d.val.manifest.patient) | set(d.test.manifest.patient)
    assert not set(d.source.manifest.name) & held
    assert not set(d.source.manifest.patient) & held_patients
    # Every validation image is in CoronaHack TRAIN (test images are in its TEST split, not used); with patient =
    # person number + category no other image shares a patient with val or test: 1044 excluded, by every criterion
    assert d.info["source_excluded_by"] == dict(excluded=1044, by_name=1044, by_patient=1044, by_content=1044)
    assert len(d.source) == 4239 and len(d.source) + d.info["source_excluded_overlap"] == 5283
    # the decoded images line up with their labels: class means differ on real X-rays
    assert d.test.images.shape[1:] == (32, 32)
    # CoronaHack's 3 rows without an image file: one grouped line (what the commands print as a warning)
    assert d.info["problem_count"] == 3 and len(d.info["problems"]) == 1
    assert d.info["problems"][0].startswith("3 image files listed in Chest_xray_Corona_Metadata.csv but missing")
    leaky = load_study_data(
        DataSpec(kermany_root, coronahack_root, image_size=32, split_seed=0, allow_overlap=True, cache_dir=cache_dir),
        quiet=True,
        log=None,
    )
    assert len(leaky.source) == 5283 and set(leaky.source.manifest.name) >= set(d.val.manifest.name)
    assert np.array_equal(leaky.val.index, d.val.index)  # the split does not depend on the source
    # every source image excluded by patient belongs to a val/test patient under the same patient_id
    excluded = leaky.source.manifest[~leaky.source.manifest.name.isin(set(d.source.manifest.name))]
    assert (excluded.name.map(sources.patient_id) == excluded.patient).all()
    assert excluded.patient.isin(held_patients).sum() == d.info["source_excluded_by"]["by_patient"]


def test_real_same_exclusion_rule_for_pretraining_and_finetuning(kermany_root, coronahack_root, cache_dir):
    d = load_study_data(
        DataSpec(kermany_root, coronahack_root, image_size=32, split_seed=0, cache_dir=cache_dir), quiet=True, log=None
    )
    # fine-tuning: Kermany's train and test share no patient, name or content, so nothing is dropped
    assert d.info["train_excluded_overlap"] == 0
    assert d.info["train_excluded_by"] == dict(excluded=0, by_name=0, by_patient=0, by_content=0)
    assert not _shares(d.train, [d.test]).any() and not _shares(d.val, [d.test]).any()
    assert not set(d.train.manifest.patient) & set(d.val.manifest.patient)  # the split
    # pre-training, by the same rule, against validation and test
    assert not _shares(d.source, [d.val, d.test]).any()


def _noise(path, seed: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 255, (48, 48), dtype=np.uint8)
    Image.fromarray(img).resize((96, 96), Image.Resampling.BICUBIC).save(path)


def test_finetuning_drops_train_images_sharing_patient_name_or_content_with_test(tmp_path):
    root, logged = tmp_path / "chest_xray", []
    for i in range(8):
        _noise(root / "train" / "NORMAL" / f"IM-{i + 100:04d}-0001.jpeg", i)
        _noise(root / "train" / "PNEUMONIA" / f"person{i + 100}_bacteria_{i}.jpeg", 100 + i)
    _noise(root / "test" / "NORMAL" / "IM-0001-0001.jpeg", 200)
    _noise(root / "test" / "PNEUMONIA" / "person5_virus_9.jpeg", 201)
    _noise(root / "test" / "PNEUMONIA" / "person6_bacteria_9.jpeg", 202)
    _noise(root / "train" / "PNEUMONIA" / "person6_bacteria_3.jpeg", 203)  # the test's patient: dropped
    _noise(root / "train" / "PNEUMONIA" / "person5_bacteria_3.jpeg", 204)  # another category: another patient
    _noise(root / "train" / "NORMAL" / "IM-0999-0001.jpeg", 200)  # the test image's content: dropped
    spec = DataSpec(root, None, image_size=32, split_seed=0, cache_dir=tmp_path / "cache")
    d = load_study_data(spec, quiet=True, log=logged.append)
    assert d.info["train_excluded_by"] == dict(excluded=2, by_name=0, by_patient=1, by_content=1)
    names = set(d.train.manifest.name) | set(d.val.manifest.name)
    assert len(names) == 16 + 1 and "person5_bacteria_3.jpeg" in names
    assert not names & {"person6_bacteria_3.jpeg", "IM-0999-0001.jpeg"}
    assert any("target train/val pool: excluded 2 images" in line for line in logged)
    again = load_study_data(spec, quiet=True, log=None)
    assert np.array_equal(again.val.index, d.val.index)  # same seed, same split (flags read from the cache)
