import numpy as np

from pneumo_ray.datasets import load_study_data


def test_real_study_data_leakage_free_source(kermany_root, coronahack_root, cache_dir):
    """Pre-training never sees a file name or patient of the target's validation or test sets, and
    the target sets are the real counts. (CoronaHack TRAIN holds every Kermany train image.)"""
    d = load_study_data(kermany_root, coronahack_root, size=32, seed=0, cache_dir=cache_dir, quiet=True, log=None)
    assert len(d.train) + len(d.val) == 5216 and len(d.test) == 624
    held = set(d.val.manifest.name) | set(d.test.manifest.name)
    held_patients = set(d.val.manifest.patient) | set(d.test.manifest.patient)
    assert not set(d.source.manifest.name) & held
    assert not set(d.source.manifest.patient) & held_patients
    # every validation image is in CoronaHack TRAIN (test images are in its TEST split, not used), and
    # so are the train images of patients who also appear in the test set
    assert d.info["source_excluded_overlap"] > len(d.val)
    assert len(d.source) + d.info["source_excluded_overlap"] == 5283  # CoronaHack TRAIN images present
    # the decoded images line up with their labels: class means differ on real X-rays
    assert d.test.images.shape[1:] == (32, 32)
    assert len(d.info["problems"]) == 3
    leaky = load_study_data(kermany_root, coronahack_root, size=32, seed=0, cache_dir=cache_dir, quiet=True,
                            log=None, allow_overlap=True)
    assert d.info["source_excluded_by"]["by_content"] >= len(d.val)  # every val image is in CoronaHack
    assert len(leaky.source) == 5283 and set(leaky.source.manifest.name) >= set(d.val.manifest.name)
    assert np.array_equal(leaky.val.index, d.val.index)  # the split does not depend on the source
