import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pneumo_ray.data import cache, sources


def _manifest(paths, labels):
    return pd.DataFrame(
        dict(
            path=[str(p) for p in paths],
            name=[p.name for p in paths],
            label=labels,
            patient=[p.stem for p in paths],
            split="train",
            source="test",
            orig_split="train",
            category="",
        )
    )


def test_real_images_decode_once_and_are_reused(kermany_root, tmp_path, monkeypatch):
    m = sources.kermany_manifest(kermany_root).manifest
    sub = pd.concat([m[m.label == 0].head(40), m[m.label == 1].head(40)])
    first = cache.decoded(sub, 32, tmp_path, quiet=True)
    assert first.images.shape == (80, 32, 32) and first.images.dtype == np.uint8
    assert first.problems == []
    # rows stay aligned with their labels and paths
    assert list(first.manifest["path"]) == list(sub["path"])
    direct = cache.decode_image(sub["path"].iloc[5], 32)
    assert np.array_equal(first.images[5], direct)
    assert 20 < first.images.mean() < 235 and first.images.std() > 20  # real content, not blank
    # second call: served from disk, the decoder is never called
    monkeypatch.setattr(cache, "_decode_chunk", lambda *a: pytest.fail("re-decoded a cached manifest"))
    again = cache.decoded(sub, 32, tmp_path, quiet=True)
    assert again.key == first.key and np.array_equal(np.asarray(again.images), np.asarray(first.images))
    assert isinstance(again.images, np.memmap)
    # another size is another cache
    assert cache.cache_key(sub, 64) != first.key


def test_bad_files_are_reported_by_name_and_never_mislabel(tmp_path):
    good_gray = tmp_path / "good_gray.jpeg"
    Image.fromarray(np.full((50, 70), 200, np.uint8)).save(good_gray)
    good_rgb = tmp_path / "good_rgb.PNG"
    Image.fromarray(np.zeros((300, 120, 3), np.uint8)).save(good_rgb)
    empty = tmp_path / "empty.jpeg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpeg"
    text.write_text("this is not an image")
    corrupt = tmp_path / "corrupt.jpeg"
    corrupt.write_bytes(good_gray.read_bytes()[:40])
    paths = [good_gray, empty, text, good_rgb, corrupt]
    dec = cache.decoded(_manifest(paths, [0, 1, 1, 1, 0]), 16, tmp_path / "c", workers=1, quiet=True)
    assert list(dec.manifest["name"]) == ["good_gray.jpeg", "good_rgb.PNG"]
    assert list(dec.manifest["label"]) == [0, 1]
    assert dec.images.shape == (2, 16, 16)
    assert dec.images[0].min() >= 195 and dec.images[1].max() == 0  # each image with its own row
    why = {p.path.rsplit("/", 1)[1]: p.reason for p in dec.problems}
    assert set(why) == {"empty.jpeg", "notes.jpeg", "corrupt.jpeg"}
    assert why["empty.jpeg"] == "empty file (0 bytes)"
    assert "cannot decode" in why["notes.jpeg"] and "cannot decode" in why["corrupt.jpeg"]


def test_changed_file_invalidates_cache(tmp_path):
    p = tmp_path / "a.png"
    Image.fromarray(np.full((8, 8), 10, np.uint8)).save(p)
    m = _manifest([p], [0])
    k1 = cache.decoded(m, 8, tmp_path / "c", quiet=True).key
    Image.fromarray(np.full((9, 9), 99, np.uint8)).save(p)
    d2 = cache.decoded(m, 8, tmp_path / "c", quiet=True)
    assert d2.key != k1 and d2.images[0].min() == 99
