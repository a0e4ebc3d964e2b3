"""Leakage audit on the real data, and the perceptual hash against re-encoded, resized copies."""

import numpy as np
import pandas as pd
from PIL import Image

from pneumo_ray.data import leakage as audit
from pneumo_ray.data import sources
from pneumo_ray.data.study_data import _decoded_set, audit_sets, exclude_leakage
from study.audit import main as audit_main


def test_real_audit_numbers(kermany_root, coronahack_root, cache_dir, tmp_path, capsys):
    assert (
        audit_main(
            [
                "--data-root",
                str(kermany_root),
                "--pretrain-root",
                str(coronahack_root),
                "--cache-dir",
                str(cache_dir),
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    s = pd.read_parquet(tmp_path / "audit_summary.parquet").set_index(["a_set", "b_set"])
    # CoronaHack TEST is the Kermany test set: 624 of 624, by name and by content
    t = s.loc[("kermany-test", "coronahack-test")]
    assert (t.a_images, t.by_name, t.by_content, t.content_label_conflicts) == (624, 624, 624, 0)
    # CoronaHack TRAIN holds every Kermany train image
    tr = s.loc[("kermany-train", "coronahack-train")]
    assert (tr.a_images, tr.by_name, tr.by_content) == (5216, 5216, 5216)
    # no test image is in CoronaHack TRAIN, and Kermany's own train and test share nothing: no patient
    # (person number + category; joining the categories would give 170, see test_patients.py), no name, no content
    assert s.loc[("kermany-test", "coronahack-train")].by_content == 0
    assert s.loc[("kermany-train", "kermany-test")].patients_shared == 0
    assert s.loc[("kermany-test", "kermany-train")][["by_patient", "by_name", "by_content"]].tolist() == [0, 0, 0]
    assert s.loc[("kermany-train", "kermany-test")][["by_patient", "by_name", "by_content"]].tolist() == [0, 0, 0]
    assert s.loc[("kermany-train", "coronahack-train")].patients_shared == 3654  # every Kermany train patient
    out = capsys.readouterr().out
    assert (
        "kermany-train vs kermany-test (patient = person number + category; `--patients` shows why): "
        "0 patients shared (0 kermany-train / 0 kermany-test images of them), 0 file names shared, 0 kermany-test "
        "images with the content of a kermany-train image"
    ) in out
    pairs = pd.read_parquet(tmp_path / "audit.parquet")
    hit = pairs[(pairs.a_set == "kermany-test") & (pairs.b_set == "coronahack-test")]
    assert len(hit) == 624 and (hit["name"] == hit["content_match"]).mean() > 0.97  # a few exact duplicates


def test_hash_finds_reencoded_resized_copy(kermany_root, cache_dir, tmp_path):
    man = sources.kermany_manifest(kermany_root).manifest
    originals = man[man.split == "test"].sample(12, random_state=0).reset_index(drop=True)
    copies = []
    for i, row in originals.iterrows():  # another size, aspect ratio, codec and name
        with Image.open(row.path) as im:
            im = im.convert("L").resize((300 + 17 * i, 260), Image.Resampling.BICUBIC)
            path = tmp_path / (f"copy{i}.jpg" if i % 2 else f"copy{i}.png")
            im.save(path, quality=60) if i % 2 else im.save(path)
        copies.append(
            dict(
                path=str(path),
                name=path.name,
                label=row.label,
                patient=f"other{i}",
                split="train",
                source="copies",
                orig_split="train",
                category="",
            )
        )
    a, _ = _decoded_set(pd.DataFrame(copies), 64, cache_dir, "copies", True)
    b, _ = _decoded_set(originals, 64, cache_dir, "originals", True)
    others, _ = _decoded_set(man[man.split == "train"].sample(300, random_state=1), 64, cache_dir, "others", True)
    m = audit.matches(a, b)
    assert m["by_content"].all() and not m["by_name"].any() and not m["by_patient"].any()
    assert (m["content_match"] == originals["name"]).all()
    assert (m["content_distance"] <= 16).all()  # measured; the threshold is 24
    # and distinct images do not match
    assert not audit.matches(others, b)["by_content"].any()
    # the copies (new names, new patients) are excluded from pre-training by content alone
    for _ in range(2):  # computed, then read back from the cache
        kept, counts = exclude_leakage(a, [b], cache_dir=tmp_path / "flags")
        assert len(kept) == 0 and counts == dict(excluded=12, by_name=0, by_patient=0, by_content=12)
    assert len(list((tmp_path / "flags").glob("leakage-*.u8"))) == 1
    kept, counts = exclude_leakage(a, [others], cache_dir=tmp_path / "flags")  # other held-out set: new key
    assert len(kept) == 12 and counts["excluded"] == 0


def test_synthetic_audit_has_no_overlap():
    sets, problems = audit_sets(None, None, size=32)
    pairs, summary = audit.audit(sets)
    cross = summary[summary.a_set != summary.b_set]
    assert problems == [] and set(sets) == {"synthetic-target-train", "synthetic-target-test", "synthetic-source-train"}
    assert cross[["by_name", "by_patient", "by_content"]].to_numpy().sum() == 0


def test_hash_is_stable_under_small_noise():
    rng = np.random.default_rng(0)
    img = (rng.random((3, 64, 64)) * 40 + np.linspace(0, 200, 64)[None, None, :]).astype(np.uint8)
    noisy = np.clip(img.astype(int) + rng.integers(-3, 4, img.shape), 0, 255).astype(np.uint8)
    h1, h2 = audit.perceptual_hash(img), audit.perceptual_hash(noisy)
    assert h1.shape == (3, 256) and (h1 != h2).sum(axis=1).max() <= audit.MATCH_DISTANCE
