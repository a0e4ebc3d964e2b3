"""Cheap checks of image files before any decoding, and problem reports grouped by kind.

`check_image_files` reads two small pieces of each file (its first 16 bytes and its last 4 KiB) and
names the files that cannot decode: empty files, files whose first bytes ("magic bytes") match no
image format, and files cut short where the format makes that cheap to see (a JPEG without its end
marker FFD9, a PNG without its IEND chunk, a BMP or WebP shorter than its header says). A file that
holds another image format than its extension says (CoronaHack's 8 `*.png` files are JPEGs) still
decodes by content: that is a note, not a problem. `python -m study.data inspect --decode` decodes
every file, the full check.

`grouped` turns a list of problems into one line per kind, with its count and the first few file
names, so that one real cause is never buried under thousands of lines.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from pneumo_ray.data.sources import Problem

HEAD, TAIL = 16, 4096  # bytes read from each end of a file
EXTENSION_FORMATS = {".jpeg": "JPEG", ".jpg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}
MAGIC = (  # (format, first bytes): every format Pillow decodes that an X-ray folder plausibly holds
    ("JPEG", b"\xff\xd8\xff"),
    ("PNG", b"\x89PNG\r\n\x1a\n"),
    ("TIFF", b"II*\x00"),
    ("TIFF", b"MM\x00*"),
    ("TIFF", b"II+\x00"),  # BigTIFF
    ("TIFF", b"MM\x00+"),
    ("BMP", b"BM"),
    ("GIF", b"GIF87a"),
    ("GIF", b"GIF89a"),
)
EMPTY = ("empty file (0 bytes)", "empty files (0 bytes)")  # (reason, kind): as the decoder says it
NO_FORMAT = "files whose first bytes match no image format (wrong magic bytes)"


def sniff(head: bytes) -> str | None:
    """The image format that a file's first bytes announce, None for none."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return next((fmt for fmt, magic in MAGIC if head.startswith(magic)), None)


def _shown(data: bytes) -> str:
    text = "".join(chr(b) if 32 <= b < 127 else "." for b in data)
    return f"{data.hex(' ').upper()} ({text!r})"


def _truncated(fmt: str, head: bytes, tail: bytes, size: int) -> tuple[str, str] | None:
    """(reason, kind) when a file of `fmt` is cut short, where a cheap look at its ends can tell."""
    if fmt == "JPEG" and b"\xff\xd9" not in tail:
        return "truncated: no JPEG end marker (FFD9) in its last bytes", "truncated JPEG files (no end marker FFD9)"
    if fmt == "PNG" and b"IEND" not in tail:
        return "truncated: no PNG end chunk (IEND) in its last bytes", "truncated PNG files (no IEND chunk)"
    if fmt in ("BMP", "WebP"):
        declared = int.from_bytes(head[2:6], "little") if fmt == "BMP" else int.from_bytes(head[4:8], "little") + 8
        if declared > size:
            why = f"truncated: {size} bytes, its {fmt} header says {declared}"
            return why, f"truncated {fmt} files (shorter than their header says)"
    if fmt == "GIF" and not tail.rstrip(b"\x00").endswith(b";"):
        return "truncated: no GIF trailer (3B) at its end", "truncated GIF files (no trailer 3B)"
    return None


def check_image_file(path: str | os.PathLike) -> tuple[Problem | None, Problem | None]:
    """(problem, note) for one file: a problem when it cannot decode, a note when it holds another image
    format than its extension says (it decodes by content)."""
    path = str(path)
    try:
        size = os.path.getsize(path)
        if size == 0:
            return Problem(path, *EMPTY), None
        with open(path, "rb") as f:
            head = f.read(HEAD)
            f.seek(max(size - TAIL, 0))
            tail = f.read(TAIL)
    except OSError as e:
        return Problem(path, f"cannot read: {e.strerror or e}", "files that cannot be read (permission or I/O)"), None
    fmt = sniff(head)
    expected = EXTENSION_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        return Problem(path, f"not an image: first bytes {_shown(head[:8])}", NO_FORMAT), None
    note = None
    if expected and fmt != expected:
        ext = Path(path).suffix.lower()
        why = f"{fmt} data under a {ext} name (decoded by its content)"
        note = Problem(path, why, f"files holding {fmt} data under a {ext} name (decoded by content)")
    truncated = _truncated(fmt, head, tail, size)
    return (Problem(path, *truncated) if truncated else None), note


def check_image_files(paths: Iterable[str | os.PathLike]) -> tuple[list[Problem], list[Problem]]:
    """(problems, notes) of `check_image_file` over many files, in their order."""
    problems, notes = [], []
    for p in paths:
        problem, note = check_image_file(p)
        problems += [problem] if problem else []
        notes += [note] if note else []
    return problems, notes


def _common_folder(paths: Sequence[str]) -> str:
    parents = [os.path.dirname(p) for p in paths]
    if not all(os.path.isabs(p) for p in parents):
        return ""
    try:
        return os.path.commonpath(parents)
    except ValueError:  # different drives
        return ""


def grouped(problems: Sequence[Problem], first: int = 3) -> list[str]:
    """One line per kind of problem, in the order each kind first occurs: a kind met once is its full
    `path: reason`; a kind met N times is `N <kind> under <folder>: a.jpeg, b.jpeg, c.jpeg, ... and
    N-3 more` (names relative to the folder the files share)."""
    groups: dict[str, list[Problem]] = {}
    for p in problems:
        groups.setdefault(p.group, []).append(p)
    lines = []
    for kind, members in groups.items():
        if len(members) == 1:
            lines.append(str(members[0]))
            continue
        paths = [m.path for m in members]
        folder = _common_folder(paths)
        names = [os.path.relpath(p, folder) for p in paths] if folder else paths
        shown = ", ".join(names[:first]) + (f", ... and {len(names) - first} more" if len(names) > first else "")
        where = f" under {folder}" if folder and folder != os.sep else ""
        lines.append(f"{len(members)} {kind}{where}: {shown}")
    return lines
