"""Data sources → one manifest.

A manifest is a DataFrame with one row per image:
    path (absolute), name (file name), label (0=NORMAL, 1=PNEUMONIA), patient, split (train|test),
    source, orig_split, category (bacteria/virus/COVID-19/... where known)
The patient comes from the file name alone (`patient_id`), the one definition that the validation
split, the leakage audit and every exclusion use; `personN_bacteria_*` and `personN_virus_*` are two
patients, because Kermany numbers persons per category (evidence: `python -m study.audit --patients`).
Every file or row that cannot be used is returned as a `Problem` naming the file and the reason;
nothing is silently dropped or relabelled. A folder that cannot be a data set at all (absent, empty,
neither layout, a split or class missing, a CoronaHack CSV without its columns, labels or images)
raises `UserError` with one line naming the path, here, before anything is decoded.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pneumo_ray.config.errors import UserError
from pneumo_ray.data.walk import resolved_folder, walk

IMAGE_EXTENSIONS = {".jpeg", ".jpg", ".png", ".bmp", ".tif", ".tiff"}
CLASSES = {"NORMAL": 0, "PNEUMONIA": 1}
KERMANY_SPLITS = {"train": "train", "test": "test", "val": "train"}  # seed: val merged into train
OS_CLUTTER = {".DS_Store", "Thumbs.db", "desktop.ini"}
MANIFEST_COLUMNS = ["path", "name", "label", "patient", "split", "source", "orig_split", "category"]

CORONAHACK_CSV = "Chest_xray_Corona_Metadata.csv"
CORONAHACK_COLUMNS = ["X_ray_image_name", "Label", "Dataset_type", "Label_2_Virus_category", "Label_1_Virus_category"]
CORONAHACK_LABELS = {"normal": 0, "pnemonia": 1, "pneumonia": 1}  # the original misspells it


@dataclass(frozen=True)
class Problem:
    """A file or row that cannot be used: `path: reason`. Reports group problems of one `kind` (a plural
    noun phrase, "empty files (0 bytes)") into one line; without a kind, problems group by reason."""

    path: str
    reason: str
    kind: str = ""

    @property
    def group(self) -> str:
        return self.kind or self.reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class Scan:
    """A manifest plus everything that could not be used, with reasons."""

    manifest: pd.DataFrame
    problems: list[Problem] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # OS clutter and duplicate copies, not problems


_PERSON = re.compile(r"^person(\d+)_(?:(bacteria|virus)_)?(\d+)?", re.IGNORECASE)
_IM = re.compile(r"^(NORMAL2-)?IM-(\d+)-(\d+)?", re.IGNORECASE)
_TRAILING_VIEW = re.compile(r"([-_](day\d+|[a-d]\d?))+$", re.IGNORECASE)


@dataclass(frozen=True)
class KermanyName:
    """The fields of a Kermany file name: `person12_virus_44.jpeg` → ("person", 12, "virus", 44);
    `NORMAL2-IM-0115-0001.jpeg` → ("NORMAL2-IM", 115, "", 1)."""

    series: str  # "person", "IM" or "NORMAL2-IM"
    number: int  # the person / IM number
    category: str  # "bacteria" or "virus" for the person series, else ""
    counter: int | None  # the number after it: a running image counter (person) or the view (IM)


def parse_kermany_name(name: str) -> KermanyName | None:
    """KermanyName of a `personN_<category>_M` / `[NORMAL2-]IM-NNNN-MMMM` name, None for any other name."""
    if m := _PERSON.match(name):
        return KermanyName(
            "person", int(m.group(1)), (m.group(2) or "").lower(), int(m.group(3)) if m.group(3) else None
        )
    if m := _IM.match(name):
        return KermanyName(
            "NORMAL2-IM" if m.group(1) else "IM", int(m.group(2)), "", int(m.group(3)) if m.group(3) else None
        )
    return None


def patient_id(name: str) -> str:
    """Patient of a Kermany/CoronaHack file name: the one definition used by the validation split,
    the leakage audit and every exclusion.

    `person123_bacteria_4.jpeg` → `person123-bacteria`, `person123_virus_7.jpeg` → `person123-virus`:
    Kermany counts person numbers per category, not per child. Measured on the real file list
    (`python -m study.audit --patients`): the image counter rises with N separately in each category
    (Spearman ≥ 0.9998 per split and category); bacteria and virus share 979 numbers, about the 894
    that independent numbering gives by chance; train and test share no (number, category) pair,
    while joining the categories would put 170 patients on both sides of Kermany's patient-wise
    split, every one of them across categories.
    `IM-0115-0001.jpeg` → `IM-0115`; `NORMAL2-IM-0115-0001.jpeg` → `NORMAL2-IM-0115` (its own
    series; train and test share no IM and no NORMAL2 number, their ranges do not even overlap).
    Other names (CoronaHack's COVID images) keep their stem without view/day suffixes, so that
    `x-day3.jpg` and `x-day5.jpg` are one patient.
    """
    if m := _PERSON.match(name):
        return f"person{int(m.group(1))}" + (f"-{m.group(2).lower()}" if m.group(2) else "")
    if m := _IM.match(name):
        return f"{'NORMAL2-' if m.group(1) else ''}IM-{m.group(2)}"
    stem = Path(name).stem
    return "other:" + (_TRAILING_VIEW.sub("", stem) or stem).lower()


def _category(name: str) -> str:
    low = name.lower()
    for cat in ("bacteria", "virus"):
        if f"_{cat}" in low:
            return cat
    return ""


def _is_clutter(part: str) -> bool:
    return part == "__MACOSX" or part.startswith("._") or part in OS_CLUTTER


KERMANY_LAYOUT = "train/ and test/, each with NORMAL/ and PNEUMONIA/ image folders"


def _folder(root: str | os.PathLike, what: str) -> Path:
    """`root` resolved, or UserError if it is not a folder or holds nothing but OS clutter."""
    path = resolved_folder(root)
    if not path.is_dir():
        raise UserError(f"{path}: no such folder; give {what}")
    if not any(not _is_clutter(p.name) for p in path.iterdir()):
        raise UserError(f"{path}: empty folder; give {what}")
    return path


def _listing(root: Path, n: int = 5) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir() if not _is_clutter(p.name))
    return ", ".join(names[:n]) + (f", ... ({len(names)} entries)" if len(names) > n else "")


def _check_kermany_layout(root: Path, rows: list[dict], split_dirs: dict[str, Path]) -> None:
    """UserError unless train and test each hold images of both classes (AUC and the class weights
    need both; the validation split comes out of train)."""
    if not rows:
        if _find(root, CORONAHACK_CSV) is not None:
            why = f"a CoronaHack folder (it holds {CORONAHACK_CSV}): give it as the pre-training root"
        else:
            why = f"not a Kaggle chest_xray/ folder (no images under {KERMANY_LAYOUT}); found: {_listing(root)}"
        raise UserError(f"{root}: {why}")
    counts = {(r["split"], r["label"]) for r in rows}
    for split in ("train", "test"):
        where = split_dirs.get(split, root / split)
        present = [name for name, label in CLASSES.items() if (split, label) in counts]
        if split not in split_dirs:
            raise UserError(f"{root}: no {split}/ folder; a Kaggle chest_xray/ folder has {KERMANY_LAYOUT}")
        if not present:
            raise UserError(
                f"{where}: no images in NORMAL/ or PNEUMONIA/; a Kaggle chest_xray/ folder has {KERMANY_LAYOUT}"
            )
        if len(present) == 1:
            other = next(name for name in CLASSES if name not in present)
            raise UserError(
                f"{where}: only {present[0]} images, no {other}/ images; both classes are needed "
                f"(a Kaggle chest_xray/ folder has {KERMANY_LAYOUT})"
            )


def kermany_manifest(root: str | os.PathLike) -> Scan:
    """Scan a Kaggle `chest_xray/` folder: <split>/<CLASS>/<image>, at any depth.

    Real downloads nest a duplicate `chest_xray/chest_xray/` and carry `__MACOSX/`, `.DS_Store`:
    each (split, class, file name) is counted once (the shallowest copy), clutter is ignored,
    and unknown class folders, non-image files and name clashes across classes are reported.
    UserError (one line) for a folder that is absent, empty, not this layout, or whose train/ or
    test/ lacks a class.
    """
    root = _folder(root, f"the Kaggle chest_xray/ folder ({KERMANY_LAYOUT})")
    problems, ignored = [], []
    found: dict[tuple[str, str], tuple[int, Path, str, str]] = {}  # (split, name) -> (depth, path, cls, orig)
    split_dirs: dict[str, Path] = {}  # the shallowest folder of each split (for messages)
    for here, dirnames, filenames in walk(root):  # linked folders and files are followed
        dirnames[:] = sorted(d for d in dirnames if not _is_clutter(d))
        rel = here.relative_to(root).parts
        parent = rel[-2].lower() if len(rel) >= 2 else None
        if parent not in KERMANY_SPLITS:
            # Only <split>/<CLASS>/ folders hold images; report image files lying elsewhere.
            stray = [f for f in filenames if Path(f).suffix.lower() in IMAGE_EXTENSIONS and not _is_clutter(f)]
            if stray:
                why = f"{len(stray)} image(s) outside a <split>/<CLASS>/ folder"
                problems.append(Problem(str(here), why, "folders with images outside a <split>/<CLASS>/ folder"))
            if len(rel) >= 1 and rel[-1].lower() in KERMANY_SPLITS:
                split_dirs.setdefault(KERMANY_SPLITS[rel[-1].lower()], here)
                for d in dirnames:
                    if d.upper() not in CLASSES:
                        why = f"unknown class folder {d!r} (expected NORMAL or PNEUMONIA)"
                        problems.append(Problem(str(here / d), why, "unknown class folders (not NORMAL or PNEUMONIA)"))
            continue
        cls = rel[-1].upper()
        if cls not in CLASSES:
            continue  # reported once from its split folder
        split = KERMANY_SPLITS[parent]
        for f in sorted(filenames):
            path = here / f
            if _is_clutter(f):
                ignored.append(str(path))
                continue
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                why = f"not an image file (extension {path.suffix or 'none'!r})"
                problems.append(Problem(str(path), why, "files that are not images (by their extension)"))
                continue
            if broken := _broken_link(path):
                problems.append(broken)
                continue
            key = (split, f)
            depth = len(rel)
            if key in found:
                prev_depth, prev_path, prev_cls, _ = found[key]
                if prev_cls != cls:
                    why = f"same file name also under {prev_cls} ({prev_path}): label ambiguous, both skipped"
                    kind = "file names under both NORMAL and PNEUMONIA (label ambiguous, skipped)"
                    problems.append(Problem(str(path), why, kind))
                    found[key] = (prev_depth, prev_path, "CONFLICT", parent)
                    continue
                ignored.append(str(path if depth >= prev_depth else prev_path))
                if depth >= prev_depth:
                    continue
            found[key] = (depth, path, cls, parent)
    rows = [
        dict(
            path=str(p),
            name=name,
            label=CLASSES[cls],
            patient=patient_id(name),
            split=split,
            source="kermany",
            orig_split=orig,
            category=_category(name),
        )
        for (split, name), (_, p, cls, orig) in sorted(found.items())
        if cls != "CONFLICT"
    ]
    _check_kermany_layout(root, rows, split_dirs)
    return Scan(pd.DataFrame(rows, columns=MANIFEST_COLUMNS), problems, ignored)


def _broken_link(path: Path) -> Problem | None:
    """A Problem for a symbolic link whose target does not exist (None for anything else)."""
    if path.exists() or not path.is_symlink():
        return None
    why = f"broken symbolic link: it points to {os.readlink(path)}, which does not exist"
    return Problem(str(path), why, "broken symbolic links (their target does not exist)")


def _shallowest(paths: list[Path]) -> list[Path]:
    return sorted(paths, key=lambda p: (len(p.parts), str(p)))


def _find(root: Path, name: str) -> Path | None:
    """The shallowest file called `name` under `root` (through links, outside OS clutter)."""
    hits = []
    for here, dirnames, filenames in walk(root):
        dirnames[:] = [d for d in dirnames if not _is_clutter(d)]
        hits += [here / name] if name in filenames else []
    return _shallowest(hits)[0] if hits else None


def _coronahack_image_dirs(root: Path) -> dict[str, Path]:
    """The flat train/ and test/ image folders (shallowest of each, through links, ignoring __MACOSX)."""
    found = []
    for here, dirnames, _ in walk(root):
        dirnames[:] = [d for d in dirnames if not _is_clutter(d)]
        found += [here / d for d in dirnames if d.lower() in ("train", "test")]
    dirs: dict[str, Path] = {}
    for p in _shallowest(found):
        dirs.setdefault(p.name.upper(), p)
    return dirs


CORONAHACK_LAYOUT = f"the Kaggle CoronaHack folder ({CORONAHACK_CSV} and its train/ and test/ image folders)"


def _read_coronahack_csv(csv: Path) -> pd.DataFrame:
    try:
        meta = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except Exception as e:  # noqa: BLE001 - report any parse failure with the file name
        raise UserError(f"{csv}: cannot read it as CSV ({type(e).__name__}: {e}); give {CORONAHACK_LAYOUT}") from e
    missing = [c for c in CORONAHACK_COLUMNS if c not in meta.columns]
    if missing:
        raise UserError(
            f"{csv}: missing column(s) {missing}; found {list(meta.columns)}; expected {CORONAHACK_COLUMNS} "
            "(the CSV of Kaggle's CoronaHack download)"
        )
    if meta.empty:
        raise UserError(f"{csv}: no rows; give {CORONAHACK_LAYOUT}")
    return meta


def _check_coronahack_rows(csv: Path, meta: pd.DataFrame, rows: list[dict], dirs: dict[str, Path], subset: str) -> None:
    """UserError when the CSV cannot be this data set's labels: most labels unknown, none of its
    images present, or the TRAIN split (what pre-training uses) without one of the classes."""
    labels = meta["Label"].str.strip()
    unknown = labels[~labels.str.lower().isin(CORONAHACK_LABELS)]
    if len(unknown) * 2 > len(meta):
        values = ", ".join(f"{v!r} x{n}" for v, n in unknown.value_counts().head(4).items())
        raise UserError(
            f"{csv}: Label is unknown in {len(unknown)} of {len(meta)} rows ({values}); expected Normal or "
            "Pnemonia/Pneumonia (Kaggle CoronaHack's labels)"
        )
    named = meta["X_ray_image_name"].str.strip()
    if not any((d / name).is_file() for d in dirs.values() for name in named):
        folders = ", ".join(str(d) for d in dirs.values())
        raise UserError(
            f"{csv}: none of its {len(meta)} listed images is in {folders}; the images belong beside the CSV "
            "(Coronahack-Chest-XRay-Dataset/.../train and test)"
        )
    train = {r["label"] for r in rows if r["split"] == "train"}
    for label, name in ((0, "Normal"), (1, "COVID-19" if subset == "covid" else "Pnemonia/Pneumonia")):
        if label not in train:
            raise UserError(
                f"{csv}: no usable TRAIN images labelled {name} (pre-training needs both classes); see the "
                "warnings of `python -m study.data inspect` on this folder"
            )


def coronahack_manifest(root: str | os.PathLike, subset: str = "all") -> Scan:
    """Scan a Kaggle CoronaHack folder (metadata CSV + flat train/ and test/ image folders).

    subset="all": healthy vs any pneumonia (the seed's pre-training task);
    subset="covid": healthy vs COVID-19 only.
    Missing image files, unknown labels and images without a CSV row are reported. UserError (one
    line) for a folder that is absent or empty, a CSV that is missing, unreadable or without the
    expected columns, mostly unknown labels, no image folders, none of the listed images, or a TRAIN
    split without one of the classes.
    """
    if subset not in ("all", "covid"):
        raise ValueError(f"subset must be 'all' or 'covid', got {subset!r}")
    root = _folder(root, CORONAHACK_LAYOUT)
    csv = root / CORONAHACK_CSV if (root / CORONAHACK_CSV).exists() else _find(root, CORONAHACK_CSV)
    if csv is None:
        raise UserError(f"{root}: no {CORONAHACK_CSV} found; give {CORONAHACK_LAYOUT}")
    meta = _read_coronahack_csv(csv)
    dirs = _coronahack_image_dirs(csv.parent)
    if not dirs:
        raise UserError(f"{csv.parent}: no train/ or test/ image folder beside {csv.name}; give {CORONAHACK_LAYOUT}")
    problems, rows = [], []
    listed: dict[str, set[str]] = {}
    for i, r in enumerate(meta.to_dict("records")):  # (iterrows: 2 s for 5910 rows)
        name, split = r["X_ray_image_name"].strip(), r["Dataset_type"].strip().upper()
        where = f"{csv}:row {i + 2} ({name or 'no name'})"
        listed.setdefault(split, set()).add(name)  # a row with a bad label still accounts for its file
        label = CORONAHACK_LABELS.get(r["Label"].strip().lower())
        if label is None:
            why = f"unknown Label {r['Label']!r} (expected Normal or Pnemonia/Pneumonia)"
            problems.append(Problem(where, why, f"CSV rows with unknown Label {r['Label']!r} (not used)"))
            continue
        if split not in ("TRAIN", "TEST"):
            why = f"unknown Dataset_type {r['Dataset_type']!r} (expected TRAIN or TEST)"
            problems.append(Problem(where, why, f"CSV rows with unknown Dataset_type {r['Dataset_type']!r} (not used)"))
            continue
        if split not in dirs:
            why = f"no {split.lower()}/ image folder under {csv.parent}"
            problems.append(Problem(where, why, f"CSV rows of {split} without a {split.lower()}/ image folder"))
            continue
        path = dirs[split] / name
        if not path.is_file():
            why = f"image file missing (listed in {csv.name} row {i + 2}, {r['Label']}/{split})"
            if broken := _broken_link(path):
                why = f"{broken.reason} (listed in {csv.name} row {i + 2})"
            problems.append(Problem(str(path), why, f"image files listed in {csv.name} but missing"))
            continue
        covid = r["Label_2_Virus_category"].strip()
        if subset == "covid" and label == 1 and covid != "COVID-19":
            continue
        rows.append(
            dict(
                path=str(path),
                name=name,
                label=label,
                patient=patient_id(name),
                split=split.lower(),
                source="coronahack",
                orig_split=split.lower(),
                category="/".join(x for x in (r["Label_1_Virus_category"].strip(), covid) if x),
            )
        )
    _check_coronahack_rows(csv, meta, rows, dirs, subset)
    for split, d in dirs.items():
        for p in sorted(d.iterdir()):
            if p.is_file() and not _is_clutter(p.name) and p.name not in listed.get(split, set()):
                why = f"image not listed in {csv.name}: no label, not used"
                problems.append(Problem(str(p), why, f"images not listed in {csv.name} (no label, not used)"))
    return Scan(pd.DataFrame(rows, columns=MANIFEST_COLUMNS), problems, [])


def detect_layout(root: str | os.PathLike) -> str:
    """'coronahack' if the folder holds CoronaHack's metadata CSV, else 'kermany'."""
    root = Path(root)
    return "coronahack" if (root / CORONAHACK_CSV).exists() or _find(root, CORONAHACK_CSV) else "kermany"


def scan(root: str | os.PathLike, subset: str = "all") -> Scan:
    """The manifest of a Kaggle chest_xray/ (Kermany) or CoronaHack folder, whichever it is (UserError,
    one line, for a folder that is neither or cannot be used; see the two manifests)."""
    _folder(root, f"a Kaggle chest_xray/ folder ({KERMANY_LAYOUT}) or {CORONAHACK_LAYOUT}")
    return coronahack_manifest(root, subset) if detect_layout(root) == "coronahack" else kermany_manifest(root)
