"""Decoded-image cache: every image decoded once, at one size, to grayscale uint8 on disk.

The cache for a manifest is `<dir>/<key>.u8` (a raw [N, size, size] uint8 array, opened as a
read-only memory map, so processes on one machine share its pages) plus `<key>.json` (which
manifest rows it holds, the `.u8`'s exact byte size and BLAKE2b checksum, and which files could
not be decoded, with the reason). The key hashes size + each file's real path (symbolic links
resolved: reached through a link or directly, a file is one file), byte size and mtime: any change to
the files makes a new cache. Files are written to a temporary name and renamed, so a
crash never leaves a half cache.

Nothing damaged is ever used: every open checks the `.u8`'s size against its metadata, and the
first open in each process checks its checksum too (memoised by path, inode, mtime and size, so a
process's many opens cost one read). A damaged entry (truncated, overwritten, unreadable metadata)
is named in one warning line on stderr and decoded again. Failures are not remembered: an open
retries the files that failed to decode, and rebuilds the entry if any of them decodes now.

Checksum cost, measured on the real 224 px Kermany train cache (262 MB, 2 CPU cores): BLAKE2b 0.30 s
(sha256 0.17 s with the CPU's SHA extensions, zlib.crc32 0.09 s, md5 0.36 s), against 1.4 s to
decode those 5216 224-px JPEGs (the original 1000-2900 px files take minutes). BLAKE2b: the same
speed on every CPU, and a 128-bit digest that no corruption matches by chance.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pneumo_ray.config.train import stable_id
from pneumo_ray.data.sources import Problem
from pneumo_ray.storage.atomic import atomic_write
from pneumo_ray.storage.progress import progress

# 2: decoding by real range (16-bit, 32-bit, float, palette, alpha, CMYK) and checksummed entries
CACHE_VERSION = 2
ENTRY_FORMAT = 2  # the metadata's layout (cached_array: a .json without it is an older cache, rebuilt)
CHUNK = 64  # images per decoding job
EMPTY_FILE = "empty file (0 bytes)"


def default_cache_dir() -> Path:
    return Path(os.environ.get("PNEUMO_RAY_CACHE", Path.home() / ".cache" / "pneumo_ray"))


@dataclass
class Decoded:
    """Images of the manifest rows that decoded, in manifest order."""

    images: np.ndarray  # [N, size, size] uint8 (memory map for file-backed data)
    manifest: pd.DataFrame  # the rows that decoded, index reset
    problems: list[Problem]  # rows that did not, with the reason
    key: str
    path: Path | None = None


# --- decoding ---------------------------------------------------------------------------------------


def _declared_range(im) -> tuple[float, float] | None:
    """The value range a high-bit-depth image declares, None where it declares none that fits.

    16-bit modes span their 16 bits (a full-range 16-bit PNG: 65535 → 255, i.e. /257). Mode "I" is
    32-bit storage: a PNG in it holds 16 bits (older Pillow), a TIFF declares its BitsPerSample and
    SampleFormat; a declared 32 bits is taken as no declaration, since such files hold 10-16 bit
    detector values and 2**32 would map them all to black."""
    if im.mode.startswith("I;16"):
        return (-32768.0, 32767.0) if im.mode.endswith("S") else (0.0, 65535.0)
    if im.mode != "I":
        return None
    if im.format == "PNG":
        return (0.0, 65535.0)
    tags = getattr(im, "tag_v2", None)
    if tags is None:
        return None
    bits, fmt = tags.get(258), tags.get(339)
    bits = bits[0] if isinstance(bits, tuple) else bits
    fmt = fmt[0] if isinstance(fmt, tuple) else fmt
    if not isinstance(bits, int) or not 1 < bits < 32:
        return None
    return (-(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1) if fmt == 2 else (0.0, 2.0**bits - 1)


def _scaled(values: np.ndarray, declared: tuple[float, float] | None) -> np.ndarray:
    """float64 values → float 0..255: by the declared range, else by the finite min-max (a constant or
    empty image → 0). NaN → 0; ±inf → the ends."""
    v = values.astype(np.float64)
    finite = np.isfinite(v)
    if declared is not None:
        lo, hi = declared
    elif finite.any():
        lo, hi = float(v[finite].min()), float(v[finite].max())
    else:
        lo = hi = 0.0
    out = np.zeros_like(v) if hi <= lo else (v - lo) * (255.0 / (hi - lo))
    out[np.isnan(v)] = 0.0
    return np.clip(out, 0.0, 255.0)


def _gray(im):
    """A PIL image → mode "L", or mode "F" with values 0..255 for the high-bit-depth modes.

    Alpha is dropped by keeping the colour channels (not composited on black): in a radiograph the
    stored grey levels are the measurement and alpha is an export artefact, and compositing would
    turn an image saved with zero alpha into a black one. Palette images go through their colours
    (RGBA, so that a transparency entry needs no special case); RGB, CMYK and YCbCr use Pillow's
    conversion, L = 0.299 R + 0.587 G + 0.114 B."""
    from PIL import Image

    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        declared = _declared_range(im)
        arr = np.asarray(im)
        if arr.ndim != 2:
            raise ValueError(f"unexpected array shape {arr.shape} for mode {im.mode}")
        return Image.fromarray(_scaled(arr, declared).astype(np.float32), "F")
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA")
    elif im.mode in ("RGBa", "La"):  # premultiplied alpha: undo it before dropping alpha
        im = im.convert("RGBA" if im.mode == "RGBa" else "LA")
    elif im.mode == "HSV":
        im = im.convert("RGB")
    elif im.mode == "LAB":
        return im.getchannel("L")  # lightness, already 0..255 in Pillow's LAB
    return im.convert("L")


def decode_image(path: str, size: int) -> np.ndarray:
    """One file → [size, size] uint8 grayscale (aspect ratio not kept, as Keras' target_size).

    8-bit files decode as they always did (a JPEG at a reduced scale directly, the fast path);
    16-bit, 32-bit integer and float images are scaled by their real range to 0..255 (`_gray`)."""
    from PIL import Image

    if os.path.getsize(path) == 0:
        raise ValueError(EMPTY_FILE)
    with Image.open(path) as im:
        im.draft("L", (size, size))  # JPEG: decode at a reduced scale directly, much faster; others: no-op
        im = _gray(im)
        if im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.BILINEAR)
        if im.mode == "F":
            return np.clip(np.rint(np.asarray(im, dtype=np.float32)), 0, 255).astype(np.uint8)
        return np.asarray(im, dtype=np.uint8)


def _failure(e: Exception) -> tuple[str, str]:
    """(reason, kind) of a decoding failure: the kind groups like failures in a report."""
    if str(e) == EMPTY_FILE:
        return EMPTY_FILE, "empty files (0 bytes)"
    return f"cannot decode image: {type(e).__name__}: {e}", f"files that cannot be decoded ({type(e).__name__})"


def _decode_chunk(args: tuple[list[str], int]) -> tuple[np.ndarray, dict[int, tuple[str, str]]]:
    paths, size = args
    out = np.zeros((len(paths), size, size), np.uint8)
    errors = {}
    for i, p in enumerate(paths):
        try:
            out[i] = decode_image(p, size)
        except Exception as e:  # noqa: BLE001 - every failure is reported with its reason
            errors[i] = _failure(e)
    return out, errors


def _real_paths(paths: list[str]) -> list[str]:
    """Each file's path with every symbolic link resolved (its folder resolved once per folder)."""
    folders: dict[str, str] = {}
    out = []
    for p in paths:
        head, name = os.path.split(p)
        if head not in folders:
            folders[head] = os.path.realpath(head)
        real = os.path.join(folders[head], name)
        out.append(os.path.realpath(real) if os.path.islink(real) else real)
    return out


def cache_key(manifest: pd.DataFrame, size: int) -> str:
    """The entry of a manifest at `size`: each file's real path (links resolved), byte size and
    modification time, and its label. A data set reached through symbolic links and directly is one
    entry: the link's path names the way to a file, not the file. The real path, not (device, inode):
    a cache on shared storage serves every node, and a network file system's device number is each
    node's own. Not the content: hashing every file to find the entry would read the whole data set
    (1.2 GB as Kaggle ships Kermany) on every process start."""

    def stat(p):
        try:
            s = os.stat(p)
            return [s.st_size, s.st_mtime_ns]
        except OSError:
            return None

    real = _real_paths(manifest["path"].tolist())
    return stable_id(
        [CACHE_VERSION, int(size), [[p, int(label), stat(p)] for p, label in zip(real, manifest["label"])]], 20
    )


# --- verified entries -------------------------------------------------------------------------------

_VERIFIED: dict[tuple[str, int, int, int], str] = {}  # (path, inode, mtime_ns, size) → checksum this process checked
_RETRIED: dict[tuple[str, int, int, int], list[list]] = {}  # same key → failures this process retried


def _hasher() -> hashlib.blake2b:
    return hashlib.blake2b(digest_size=16)


def _file_checksum(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, _hasher).hexdigest()


def _stat_key(path: Path) -> tuple[str, int, int, int]:
    st = os.stat(path)
    return (str(path), st.st_ino, st.st_mtime_ns, st.st_size)


def _damaged(path: Path, why: str) -> None:
    print(f"warning: decoded-image cache {path} is damaged ({why}); building it again", file=sys.stderr, flush=True)
    return None


def _read_entry(data_path: Path, meta_path: Path, old_format_ok: bool = False) -> dict | None:
    """The metadata of an intact entry (`.u8` of the recorded size and checksum), None for a miss: an
    absent entry quietly (never built, or another process is between its two renames), a damaged one
    with one warning line. `old_format_ok`: a .json from before ENTRY_FORMAT is a quiet miss too."""
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return _damaged(meta_path, f"unreadable metadata: {type(e).__name__}")
    if old_format_ok and isinstance(meta, dict) and "format" not in meta:
        return None
    if not (
        isinstance(meta, dict)
        and meta.get("format") == ENTRY_FORMAT
        and isinstance(meta.get("bytes"), int)
        and isinstance(meta.get("blake2b"), str)
    ):
        return _damaged(meta_path, "metadata without its size and checksum")
    try:
        memo = _stat_key(data_path)
    except FileNotFoundError:
        return _damaged(data_path, "file missing beside its .json")
    if memo[3] != meta["bytes"]:
        return _damaged(data_path, f"{memo[3]} bytes, its .json says {meta['bytes']}: truncated or replaced")
    if _VERIFIED.get(memo) != meta["blake2b"]:
        if _file_checksum(data_path) != meta["blake2b"]:
            return _damaged(data_path, "content does not match its checksum: overwritten or corrupted")
        _VERIFIED[memo] = meta["blake2b"]
    return meta


def _write_entry(data_path: Path, meta_path: Path, chunks: Iterator[bytes], meta: dict) -> dict:
    """Stream `chunks` into the `.u8`, then write `meta` + its size and checksum as the `.json`."""
    h, written = _hasher(), 0

    def stream(tmp: Path) -> None:
        nonlocal written
        with open(tmp, "wb") as f:
            for c in chunks:
                f.write(c)
                h.update(c)
                written += len(c)

    atomic_write(data_path, stream)
    meta = dict(meta, format=ENTRY_FORMAT, bytes=written, blake2b=h.hexdigest())
    atomic_write(meta_path, lambda p: p.write_text(json.dumps(meta)))
    _VERIFIED[_stat_key(data_path)] = meta["blake2b"]  # this process wrote it: no need to read it back
    return meta


# --- the decoded cache ------------------------------------------------------------------------------


def _entry_fits(meta: dict, n: int, size: int) -> str | None:
    """Why a checksummed entry's metadata does not describe this manifest's cache (None: it does)."""
    kept, failed = meta.get("kept"), meta.get("failed")
    if meta.get("version") != CACHE_VERSION or meta.get("size") != size or meta.get("n") != n:
        return "metadata for another version, size or row count"
    if not (
        isinstance(kept, list)
        and isinstance(failed, list)
        and all(isinstance(i, int) for i in kept)
        and all(isinstance(f, list) and len(f) == 4 and isinstance(f[0], int) and 0 <= f[0] < n for f in failed)
    ):
        return "metadata without its row lists"
    if meta["bytes"] != len(kept) * size * size or (kept and not 0 <= min(kept) <= max(kept) < n):
        return f"metadata rows ({len(kept)}) do not match the .u8 size ({meta['bytes']} bytes)"
    return None


def decoded(
    manifest: pd.DataFrame,
    size: int,
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
    label: str = "images",
    quiet: bool = False,
) -> Decoded:
    """Decode (or reuse) the manifest's images at `size`; return the decodable rows + problems."""
    manifest = manifest.reset_index(drop=True)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(manifest, size)
    data_path, meta_path = cache_dir / f"{key}.u8", cache_dir / f"{key}.json"
    paths = manifest["path"].tolist()
    meta = _read_entry(data_path, meta_path)
    if meta is not None and (why := _entry_fits(meta, len(paths), size)):
        meta = _damaged(meta_path, why)
    if meta is None:
        bar = progress(len(paths), f"decoding {label}", enabled=not quiet, unit="img")
        with bar:
            meta = _build(paths, size, data_path, meta_path, workers or min(os.cpu_count() or 1, 8), bar)
    meta, problems = _retry_failures(meta, paths, size, data_path, meta_path)
    keep = np.asarray(meta["kept"], dtype=np.int64)
    images = (
        np.memmap(data_path, np.uint8, "r", shape=(len(keep), size, size))
        if len(keep)
        else np.zeros((0, size, size), np.uint8)
    )
    return Decoded(images, manifest.iloc[keep].reset_index(drop=True), problems, key, data_path)


def _problems(failures: list, paths: list[str]) -> list[Problem]:
    """The failures recorded in an entry, named by this manifest's paths (the entry may have been built
    through other links to the same files)."""
    return [Problem(paths[row], reason, kind) for row, _, reason, kind in failures]


def _build(paths: list[str], size: int, data_path: Path, meta_path: Path, workers: int, bar) -> dict:
    """Decode every file (in a process pool when there are many) and write the entry."""
    n, t0 = len(paths), time.time()
    jobs = [(paths[i : i + CHUNK], size) for i in range(0, n, CHUNK)]
    kept, failed = [], []

    def chunks() -> Iterator[bytes]:
        pool = ProcessPoolExecutor(workers) if workers > 1 and n > CHUNK else None
        try:
            results = pool.map(_decode_chunk, jobs) if pool else map(_decode_chunk, jobs)
            for j, (arr, errors) in enumerate(results):
                base = j * CHUNK
                good = [i for i in range(len(arr)) if i not in errors]
                kept.extend(base + i for i in good)
                failed.extend([base + i, paths[base + i], *errors[i]] for i in sorted(errors))
                bar.update(len(arr))
                yield arr[good].tobytes()
        finally:
            if pool:
                pool.shutdown(cancel_futures=True)

    meta = dict(version=CACHE_VERSION, size=size, n=n, kept=kept, failed=failed)
    return _write_entry(data_path, meta_path, chunks(), dict(meta, seconds=round(time.time() - t0, 2)))


def _retry_failures(
    meta: dict, paths: list[str], size: int, data_path: Path, meta_path: Path
) -> tuple[dict, list[Problem]]:
    """Decode the files that failed when the entry was built once more (once per process), and return
    the entry's metadata and the files that still fail. If any decodes now, the entry is rebuilt with
    it first (the rows that decoded before are copied, only the failures are decoded again)."""
    if not meta["failed"]:
        return meta, []
    memo = _stat_key(data_path)
    if memo in _RETRIED:
        return meta, _problems(_RETRIED[memo], paths)
    fixed: dict[int, np.ndarray] = {}
    still = []
    for row, *_ in meta["failed"]:
        try:
            fixed[row] = decode_image(paths[row], size)
        except Exception as e:  # noqa: BLE001 - reported with its reason, as when it was built
            still.append([row, paths[row], *_failure(e)])
    if fixed:
        old = np.memmap(data_path, np.uint8, "r", shape=(len(meta["kept"]), size, size)) if meta["kept"] else None
        position = {row: i for i, row in enumerate(meta["kept"])}
        kept = sorted([*position, *fixed])

        def chunks() -> Iterator[bytes]:
            for i in range(0, len(kept), CHUNK):
                rows = kept[i : i + CHUNK]
                yield b"".join(fixed[r].tobytes() if r in fixed else old[position[r]].tobytes() for r in rows)

        unchecked = {k: v for k, v in meta.items() if k not in ("format", "bytes", "blake2b")}
        meta = _write_entry(data_path, meta_path, chunks(), dict(unchecked, kept=kept, failed=still))
        memo = _stat_key(data_path)
    _RETRIED[memo] = still
    return meta, _problems(still, paths)


# --- generated arrays -------------------------------------------------------------------------------


def cached_array(
    key: str,
    shape: tuple[int, ...],
    build: Callable[[], tuple[np.ndarray, dict]],
    cache_dir: str | os.PathLike | None = None,
) -> tuple[np.ndarray, dict]:
    """A generated uint8 array (and its JSON-able metadata) cached under `key`; `build()` returns
    (array, metadata) and runs only on a miss (or a damaged entry, checked as the decoded cache's).
    Used for the synthetic phantoms and the leakage flags."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    path, meta_path = cache_dir / f"{key}.u8", cache_dir / f"{key}.json"
    nbytes = int(np.prod(shape))
    entry = _read_entry(path, meta_path, old_format_ok=True) if nbytes else None
    if entry is not None and (entry["bytes"] != nbytes or not isinstance(entry.get("meta"), dict)):
        entry = _damaged(meta_path, f"metadata for {entry['bytes']} bytes, expected {nbytes}")
    if entry is None:
        arr, meta = build()
        arr = np.ascontiguousarray(arr, dtype=np.uint8)
        if arr.shape != tuple(shape):
            raise ValueError(f"generated array has shape {arr.shape}, expected {shape}")
        if not nbytes:  # nothing to map (a memory map of an empty file is an error)
            return arr, meta
        entry = _write_entry(path, meta_path, iter([arr.tobytes()]), dict(meta=meta))
    return np.memmap(path, np.uint8, "r", shape=tuple(shape)), entry["meta"]
