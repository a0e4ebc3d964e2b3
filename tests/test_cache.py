import hashlib
import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pneumo_ray.data import cache, sources
from pneumo_ray.storage import progress


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


# --- a verified cache: nothing damaged is ever used ------------------------------------------------


def _small_set(tmp_path, n=6):
    """n distinct small PNGs and their manifest (labels alternate)."""
    paths = []
    for i in range(n):
        p = tmp_path / "img" / f"IM-{i:04d}-0001.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((20, 20), 30 * i + 10, np.uint8)).save(p)
        paths.append(p)
    return _manifest(paths, [i % 2 for i in range(n)])


def _new_process(monkeypatch):
    """Forget what this process has checked and retried, as a new process (a Ray worker) starts."""
    monkeypatch.setattr(cache, "_VERIFIED", {})
    monkeypatch.setattr(cache, "_RETRIED", {})


def _one_warning(capsys, name: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: ") and name in err[0] and "damaged" in err[0], err
    return err[0]


@pytest.mark.parametrize(
    "damage",
    [
        "u8-truncated",  # was: ValueError: mmap length is greater than file size, on every run
        "u8-random",  # was: used silently (test AUC 0.35 instead of 0.74)
        "u8-zeros",
        "u8-missing",
        "json-truncated",  # was: JSONDecodeError
        "json-garbage",
        "json-wrong-rows",
    ],
)
def test_damaged_entry_is_named_and_rebuilt_never_used(tmp_path, monkeypatch, capsys, damage):
    m = _small_set(tmp_path)
    first = cache.decoded(m, 16, tmp_path / "c", workers=1, quiet=True)
    want = np.array(first.images)
    capsys.readouterr()
    u8, js = first.path, first.path.with_suffix(".json")
    target = u8 if damage.startswith("u8") else js
    data = target.read_bytes()
    if damage == "u8-truncated":
        u8.write_bytes(data[: len(data) // 2])
    elif damage == "u8-random":
        u8.write_bytes(np.random.default_rng(0).integers(0, 256, len(data), dtype=np.uint8).tobytes())
    elif damage == "u8-zeros":
        u8.write_bytes(bytes(len(data)))
    elif damage == "u8-missing":
        u8.unlink()
    elif damage == "json-truncated":
        js.write_bytes(data[: len(data) // 2])
    elif damage == "json-garbage":
        js.write_bytes(np.random.default_rng(1).integers(0, 256, len(data), dtype=np.uint8).tobytes())
    else:  # valid JSON whose rows no longer describe the .u8
        meta = json.loads(data)
        js.write_text(json.dumps(dict(meta, kept=meta["kept"][:-1])))
    _new_process(monkeypatch)
    again = cache.decoded(m, 16, tmp_path / "c", workers=1, quiet=True)
    _one_warning(capsys, target.name)
    assert np.array_equal(np.asarray(again.images), want) and list(again.manifest["path"]) == list(m["path"])
    # rebuilt: the next process opens it without a word
    _new_process(monkeypatch)
    cache.decoded(m, 16, tmp_path / "c", workers=1, quiet=True)
    assert capsys.readouterr().err == ""


def test_metadata_records_size_and_checksum(tmp_path):
    m = _small_set(tmp_path)
    d = cache.decoded(m, 16, tmp_path / "c", workers=1, quiet=True)
    meta = json.loads(d.path.with_suffix(".json").read_text())
    assert meta["bytes"] == d.path.stat().st_size == 6 * 16 * 16
    assert meta["blake2b"] == hashlib.blake2b(d.path.read_bytes(), digest_size=16).hexdigest()


def test_checksum_read_once_per_process(tmp_path, monkeypatch):
    m = _small_set(tmp_path)
    cache.decoded(m, 16, tmp_path / "c", workers=1, quiet=True)
    reads = []
    real = cache._file_checksum
    monkeypatch.setattr(cache, "_file_checksum", lambda path: reads.append(1) or real(path))
    for _ in range(3):
        cache.decoded(m, 16, tmp_path / "c", workers=1, quiet=True)
    assert reads == []  # the process that built it knows its checksum
    _new_process(monkeypatch)
    for _ in range(3):
        cache.decoded(m, 16, tmp_path / "c", workers=1, quiet=True)
    assert reads == [1]  # a new process: one check, however many opens


def test_size_checked_on_every_open(tmp_path, monkeypatch, capsys):
    """Even after this process has checked the checksum, a .u8 cut short is caught (its size)."""
    m = _small_set(tmp_path)
    d = cache.decoded(m, 16, tmp_path / "c", workers=1, quiet=True)
    capsys.readouterr()
    with open(d.path, "r+b") as f:
        f.truncate(100)
    again = cache.decoded(m, 16, tmp_path / "c", workers=1, quiet=True)
    assert "100 bytes" in _one_warning(capsys, d.path.name) and again.images.shape == (6, 16, 16)


def test_decode_failures_are_retried_not_remembered(tmp_path, monkeypatch, capsys):
    """A file that failed once (a decoder since fixed, a transient read error) is tried again by the
    next process: the entry gains it, although the file's size and mtime, hence the key, are unchanged."""
    m = _small_set(tmp_path)
    flaky = m["path"].iloc[2]
    real = cache.decode_image

    def failing(path, size):
        if path == flaky:
            raise OSError("transient read error")
        return real(path, size)

    monkeypatch.setattr(cache, "decode_image", failing)
    first = cache.decoded(m, 16, tmp_path / "c", workers=1, quiet=True)
    assert len(first.manifest) == 5 and [p.path for p in first.problems] == [flaky]
    assert "transient read error" in first.problems[0].reason
    # the same process does not retry on every open
    again = cache.decoded(m, 16, tmp_path / "c", workers=1, quiet=True)
    assert len(again.manifest) == 5 and again.key == first.key
    # a later run: the failure is retried, still fails, is reported again; the entry is kept
    _new_process(monkeypatch)
    again = cache.decoded(m, 16, tmp_path / "c", workers=1, quiet=True)
    assert len(again.manifest) == 5 and len(again.problems) == 1
    # fixed: the next run decodes it and rebuilds the entry with it, in manifest order
    monkeypatch.setattr(cache, "decode_image", real)
    _new_process(monkeypatch)
    fixed = cache.decoded(m, 16, tmp_path / "c", workers=1, quiet=True)
    assert fixed.key == first.key and fixed.problems == []
    assert list(fixed.manifest["path"]) == list(m["path"])
    assert [int(fixed.images[i].mean()) for i in range(6)] == [30 * i + 10 for i in range(6)]
    assert capsys.readouterr().err == ""
    _new_process(monkeypatch)  # and it stays rebuilt, checksum and all
    monkeypatch.setattr(cache, "_decode_chunk", lambda *a: pytest.fail("re-decoded a complete entry"))
    assert cache.decoded(m, 16, tmp_path / "c", workers=1, quiet=True).problems == []


def test_cached_array_damage_is_rebuilt(tmp_path, monkeypatch, capsys):
    calls = []

    def build():
        calls.append(1)
        return np.arange(24, dtype=np.uint8).reshape(2, 3, 4), {"note": "x"}

    arr, meta = cache.cached_array("k", (2, 3, 4), build, tmp_path)
    assert meta == {"note": "x"} and np.array_equal(arr, np.arange(24).reshape(2, 3, 4))
    (tmp_path / "k.u8").write_bytes(bytes(24))
    _new_process(monkeypatch)
    arr, meta = cache.cached_array("k", (2, 3, 4), build, tmp_path)
    _one_warning(capsys, "k.u8")
    assert len(calls) == 2 and np.array_equal(arr, np.arange(24).reshape(2, 3, 4)) and meta == {"note": "x"}
    # a .json from before the checksums: rebuilt quietly (not damage)
    (tmp_path / "k.json").write_text(json.dumps({"note": "old"}))
    _new_process(monkeypatch)
    cache.cached_array("k", (2, 3, 4), build, tmp_path)
    assert len(calls) == 3 and capsys.readouterr().err == ""


# --- progress (storage/progress.py, used by the cache builder) -------------------------------------


def test_progress_in_a_log_file_is_lines_at_most_every_interval():
    out = io.StringIO()  # not a terminal: a log file, CI, a Ray worker
    with progress.progress(100, "decoding x", unit="img", stream=out, interval=3600) as bar:
        for _ in range(100):
            bar.update(1, loss=0.25)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and "\r" not in out.getvalue()  # only the final line within the interval
    assert lines[0].startswith("decoding x: 100%") and "100/100" in lines[0] and "loss=0.25" in lines[0]
    out = io.StringIO()
    with progress.progress(3, "epoch", stream=out, interval=0) as bar:
        for _ in range(3):
            bar.update(1)
    assert len(out.getvalue().splitlines()) == 3  # interval 0: a line per update, none repeated at close


def test_progress_on_a_terminal_is_a_live_bar_and_disabled_is_silent():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    out = Terminal()
    with progress.progress(10, "epoch 1", unit="img", stream=out) as bar:
        bar.update(10, loss=1.5)
    assert "\r" in out.getvalue() and "10/10" in out.getvalue() and "loss=1.5" in out.getvalue()
    out = Terminal()
    with progress.progress(10, "quiet", enabled=False, stream=out) as bar:
        bar.update(10)
    assert out.getvalue() == ""


def test_cache_build_reports_progress_unless_quiet(tmp_path, capsys):
    m = _small_set(tmp_path)
    cache.decoded(m, 16, tmp_path / "c", workers=1, label="target-train")
    err = capsys.readouterr().err
    assert "decoding target-train: 100%" in err and "6/6" in err
    cache.decoded(m, 8, tmp_path / "c", workers=1, quiet=True)
    assert capsys.readouterr().err == ""
