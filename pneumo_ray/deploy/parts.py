"""Folders as one tar stream cut into parts of at most N bytes, with a manifest of checksums, and
the way back: every part checked (size and SHA-256) before anything is unpacked.

Air-gapped machines take files in pieces of limited size (a transfer tool's limit, a mail gateway's,
removable media). A tar stream needs no temporary copy of the whole: parts are written as the stream
goes, and joined by reading the parts one after the other.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pneumo_ray.config.errors import UserError

MANIFEST_SUFFIX = ".manifest.json"
CHUNK = 1 << 20


class _PartWriter:
    """A write-only stream that goes to `<stem>.part-000`, `-001`, … of at most `limit` bytes each."""

    def __init__(self, stem: Path, limit: int) -> None:
        self.stem, self.limit = stem, limit
        self.parts: list[dict] = []
        self.whole = hashlib.sha256()
        self.file: BinaryIO | None = None
        self.size = 0

    def _next(self) -> None:
        self._close_part()
        path = self.stem.with_name(f"{self.stem.name}.part-{len(self.parts):03d}")
        self.file, self.size, self.digest = path.open("wb"), 0, hashlib.sha256()
        self.parts.append(dict(file=path.name, bytes=0, sha256=""))

    def _close_part(self) -> None:
        if self.file is not None:
            self.file.close()
            self.parts[-1].update(bytes=self.size, sha256=self.digest.hexdigest())
            self.file = None

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while len(view):
            if self.file is None or self.size == self.limit:
                self._next()
            n = min(len(view), self.limit - self.size)
            self.file.write(view[:n])
            self.digest.update(view[:n])
            self.whole.update(view[:n])
            self.size += n
            view = view[n:]
        return len(data)

    def close(self) -> None:
        self._close_part()


class _PartReader:
    """The parts read back as one stream, in order."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths, self.file = list(paths), None

    def read(self, n: int = -1) -> bytes:
        out = bytearray()
        while n < 0 or len(out) < n:
            if self.file is None:
                if not self.paths:
                    break
                self.file = self.paths.pop(0).open("rb")
            chunk = self.file.read(-1 if n < 0 else n - len(out))
            if not chunk:
                self.file.close()
                self.file = None
                continue
            out += chunk
        return bytes(out)


@dataclass(frozen=True)
class Packed:
    manifest: Path
    parts: int
    bytes: int


def pack(
    entries: Iterable[tuple[Path, str]], out: Path, name: str, part_bytes: int, contents: dict | None = None
) -> Packed:
    """Write the folders or files `entries` ((path on disk, name in the archive), links followed) as
    `out/<name>.tar.part-NNN` of at most `part_bytes` each and `out/<name>.manifest.json`."""
    if part_bytes < 1_000_000:
        raise UserError(f"--part-mb: parts of {part_bytes} bytes are too small; give 1 MB or more")
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(f"{name}.tar.part-*"):  # a shorter archive must not leave parts of a longer one
        old.unlink()
    writer = _PartWriter(out / f"{name}.tar", part_bytes)
    with tarfile.open(fileobj=writer, mode="w|", dereference=True) as tar:
        for path, arcname in entries:
            tar.add(str(path), arcname=arcname, filter=_portable)
    writer.close()
    total = sum(p["bytes"] for p in writer.parts)
    manifest = dict(
        name=name,
        format="tar",
        created=time.strftime("%Y-%m-%dT%H:%M:%S"),
        bytes=total,
        sha256=writer.whole.hexdigest(),
        part_bytes=part_bytes,
        parts=writer.parts,
        contents=contents or {},
    )
    path = out / f"{name}{MANIFEST_SUFFIX}"
    path.write_text(json.dumps(manifest, indent=1))
    return Packed(path, len(writer.parts), total)


def _portable(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """No owner names or ids: the target's user owns what it unpacks."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_text())
        manifest["parts"][0]["file"]
        return manifest
    except FileNotFoundError:
        raise UserError(f"{path}: no such manifest; give the .manifest.json that came with the parts") from None
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise UserError(f"{path}: not a parts manifest ({type(e).__name__}: {e}); copy it again") from None


def check_parts(manifest_path: Path) -> list[Path]:
    """The parts of a manifest, each checked for presence, size and SHA-256 (UserError naming the
    first bad one and the fix), in order."""
    manifest = read_manifest(manifest_path)
    folder, paths, whole = manifest_path.parent, [], hashlib.sha256()
    for part in manifest["parts"]:
        path = folder / part["file"]
        if not path.is_file():
            raise UserError(f"{path}: part {part['file']} is missing; copy every part beside {manifest_path.name}")
        size = path.stat().st_size
        if size != part["bytes"]:
            raise UserError(f"{path}: {size} bytes, the manifest says {part['bytes']} (cut short?); copy it again")
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
                whole.update(chunk)
        if digest.hexdigest() != part["sha256"]:
            raise UserError(f"{path}: its SHA-256 is not the manifest's (damaged in transfer); copy it again")
        paths.append(path)
    if whole.hexdigest() != manifest["sha256"]:
        raise UserError(f"{manifest_path}: the parts do not add up to the archive it describes; copy them again")
    return paths


def unpack(manifest_path: Path, dest: Path) -> dict:
    """Check every part, then unpack the archive into `dest` (tar's 'data' filter: nothing outside
    `dest`, no device files, no absolute links). Returns the manifest."""
    paths = check_parts(manifest_path)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=_PartReader(paths), mode="r|") as tar:
        tar.extractall(dest, filter="data")
    return read_manifest(manifest_path)
