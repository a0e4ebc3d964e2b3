"""Study data: the target's train/val/test sets and the pre-training source, from real folders
(Kermany, CoronaHack) or, by default, from the synthetic phantoms.

An `ImageSet` is a view (row index) onto a decoded uint8 array, usually a memory map shared by
every process on the machine; batches are read from it on demand.

One exclusion rule for everything trained on: an image that shares a file name, a patient
(`sources.patient_id`) or its content (perceptual hash) with a held-out set is not trained on.
Pre-training drops such source images against the target's validation and test sets; fine-tuning
drops such target-train images against the test set before the validation split (the split itself
keeps patients apart). Both go through `exclude_leakage` and its cache.

Both data folders are scanned before anything is decoded, so a folder that cannot be used is one
`UserError` line in a second, not a traceback after minutes of decoding; problems with single files
are collected and reported one line per kind (`info["problems"]`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from pneumo_ray.config.data import DataSpec
from pneumo_ray.config.errors import UserError
from pneumo_ray.config.train import stable_id
from pneumo_ray.data import cache, phantoms, sources
from pneumo_ray.data import leakage as audit
from pneumo_ray.data.checks import grouped
from pneumo_ray.data.split import patient_grouped_split

PathOrNone = str | os.PathLike | None


@dataclass
class ImageSet:
    images: np.ndarray  # [N_all, S, S] uint8, shared
    index: np.ndarray  # rows of `images` in this set
    manifest: pd.DataFrame  # one row per element of `index`
    name: str = ""

    def __post_init__(self):
        self.index = np.asarray(self.index, np.int64)
        self.manifest = self.manifest.reset_index(drop=True)
        self.labels = self.manifest["label"].to_numpy(np.int64)
        if len(self.index) != len(self.manifest):
            raise ValueError(f"{self.name}: {len(self.index)} images but {len(self.manifest)} manifest rows")

    def __len__(self) -> int:
        return len(self.index)

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    def batch(self, rows: ArrayLike) -> np.ndarray:
        """uint8 [len(rows), S, S] for positions `rows` of this set (read in file order for memmaps)."""
        ix = self.index[np.asarray(rows)]
        order = np.argsort(ix, kind="stable")
        out = np.empty((len(ix),) + self.images.shape[1:], np.uint8)
        out[order] = self.images[ix[order]]
        return out

    def subset(self, rows: ArrayLike, name: str | None = None) -> ImageSet:
        rows = np.asarray(rows, np.int64)
        return ImageSet(self.images, self.index[rows], self.manifest.iloc[rows], name or self.name)

    def class_counts(self) -> tuple[int, int]:
        return int((self.labels == 0).sum()), int((self.labels == 1).sum())

    def describe(self) -> str:
        n0, n1 = self.class_counts()
        patients = self.manifest["patient"].nunique()
        return f"{self.name}: {len(self)} images (NORMAL {n0}, PNEUMONIA {n1}, {patients} patients)"


@dataclass
class StudyData:
    train: ImageSet
    val: ImageSet
    test: ImageSet
    source: ImageSet | None
    info: dict = field(default_factory=dict)  # hashes, counts, problems: recorded with results


def manifest_hash(manifest: pd.DataFrame) -> str:
    return stable_id(sorted(zip(manifest["name"], manifest["label"].astype(int), manifest["split"])), 16)


# Fixed data seeds: the synthetic data set is one fixed data set, like a download; the run's
# seed only changes the split, initialisation and augmentation.
SYNTHETIC = dict(target_train=(1, 2000), target_test=(2, 624), source_train=(3, 2000))


def synthetic_set(part: str, size: int, cache_dir: PathOrNone = None, n: int | None = None) -> ImageSet:
    """One part of the embedded synthetic data set ('target_train', 'target_test', 'source_train')."""
    seed, default_n = SYNTHETIC[part]
    n = n or default_n
    domain = "source" if part.startswith("source") else "target"
    split = "test" if part.endswith("test") else "train"

    def build():
        imgs, labels, patients = phantoms.phantom_images(n, size, domain=domain, seed=seed)
        return imgs, dict(labels=labels.tolist(), patients=patients.tolist())

    key = "phantom-" + stable_id([getattr(phantoms, "VERSION", 1), part, seed, n, size], 20)
    images, meta = cache.cached_array(key, (n, size, size), build, cache_dir)
    labels, patients = np.asarray(meta["labels"]), meta["patients"]
    manifest = pd.DataFrame(
        dict(
            path=[f"synthetic://{part}/{i:05d}" for i in range(n)],
            name=[f"{part}-{i:05d}.png" for i in range(n)],
            label=labels.astype(np.int64),
            patient=[f"phantom-{part}-{p}" for p in patients],
            split=split,
            source=f"synthetic-{domain}",
            orig_split=split,
            category="",
        )
    )
    return ImageSet(images, np.arange(n), manifest, part)


def _decoded_set(manifest: pd.DataFrame, size: int, cache_dir, label: str, quiet: bool):
    dec = cache.decoded(manifest, size, cache_dir, label=label, quiet=quiet)
    return ImageSet(dec.images, np.arange(len(dec.manifest)), dec.manifest, label), dec.problems


def _scanned(flag: str, root, subset: str | None = None) -> sources.Scan:
    """The manifest of a data folder (Kermany only where `subset` is None); its UserError names the flag."""
    try:
        return sources.kermany_manifest(root) if subset is None else sources.scan(root, subset)
    except UserError as e:
        raise UserError(f"{flag}: {e}") from None


def _both_classes(s: ImageSet, flag: str, root, part: str, problems: list[sources.Problem]) -> None:
    """UserError when decoding left a set without one class (every such file failed to decode)."""
    for label, name in ((0, "NORMAL"), (1, "PNEUMONIA")):
        if label not in set(s.labels.tolist()):
            first = f"; first problem: {problems[0]}" if problems else ""
            raise UserError(
                f"{flag}: {os.path.abspath(root)}: no {name} image of {part} could be decoded{first}; "
                "`python -m study.data inspect` lists them all"
            )


def _identity(s: ImageSet):
    """What a set's pixels are: its backing file (the decoded cache's name covers the files' paths,
    sizes and mtimes) and its rows; None for an in-memory array."""
    filename = getattr(s.images, "filename", None)
    return None if filename is None else [os.path.basename(filename), stable_id(s.index.tolist(), 16)]


def exclude_leakage(source: ImageSet, held_out: list[ImageSet], cache_dir: PathOrNone = None) -> tuple[ImageSet, dict]:
    """Drop source images that share a file name, a patient or their content (perceptual hash) with
    any held-out set. CoronaHack reuses Kermany's images under the same names, but a re-encoded copy
    under another name is caught by content too. Returns (kept, counts by reason).

    The flags are cached beside the decoded images (keyed by the sets' pixels and the matching
    rule), so the Ray workers that re-open the study data do not hash every image again."""
    ids = [_identity(s) for s in (source, *held_out)]
    rule = [audit.HASH_BITS, audit.MATCH_DISTANCE]
    flags = None
    if all(ids):
        key = "leakage-" + stable_id([rule, ids, [list(s.manifest["name"]) for s in held_out]], 20)

        def build():
            f = audit.leakage_flags(source, held_out)[["by_name", "by_patient", "by_content"]]
            return f.to_numpy(np.uint8), {}

        arr, _ = cache.cached_array(key, (len(source), 3), build, cache_dir)
        flags = pd.DataFrame(np.asarray(arr, bool), columns=["by_name", "by_patient", "by_content"])
    else:
        flags = audit.leakage_flags(source, held_out)
    drop = (flags["by_name"] | flags["by_patient"] | flags["by_content"]).to_numpy()
    counts = dict(
        excluded=int(drop.sum()),
        by_name=int(flags["by_name"].sum()),
        by_patient=int(flags["by_patient"].sum()),
        by_content=int(flags["by_content"].sum()),
    )
    return source.subset(np.flatnonzero(~drop), source.name), counts


def audit_sets(
    data_root: PathOrNone = None,
    pretrain_root: PathOrNone = None,
    *,
    size: int = 64,
    cache_dir: PathOrNone = None,
    quiet: bool = False,
) -> tuple[dict[str, ImageSet], list[str]]:
    """The sets a leakage audit compares: target train/test and source train/test (synthetic
    phantoms where a root is not given). Returns ({name: ImageSet}, problems grouped one line per
    kind). Both folders are scanned (UserError for one that cannot be used) before any decoding."""
    sets, problems = {}, []
    scans = {
        role: (root, _scanned(flag, root, "all"))
        for role, flag, root in (("target", "--data-root", data_root), ("source", "--pretrain-root", pretrain_root))
        if root is not None
    }
    for role in ("target", "source"):
        if role not in scans:
            parts = ("target_train", "target_test") if role == "target" else ("source_train",)
            sets.update({f"synthetic-{p.replace('_', '-')}": synthetic_set(p, size, cache_dir) for p in parts})
            continue
        root, scan = scans[role]
        problems += scan.problems
        layout = sources.detect_layout(root)
        for split in ("train", "test"):
            man = scan.manifest[scan.manifest.split == split]
            if len(man):
                s, probs = _decoded_set(man, size, cache_dir, f"{layout}-{split}", quiet)
                sets[f"{layout}-{split}"] = s
                problems += probs
    return sets, grouped(problems)


def load_study_data(spec: DataSpec, *, quiet: bool = False, log: Callable[[str], object] | None = print) -> StudyData:
    """Target train/val/test (+ pre-training source) as `spec` says. With no data_root: the synthetic
    phantoms (target and, unless use_pretrain is False, the shifted synthetic source domain). The
    driver and every Ray worker call this with the same spec and get the same sets from the cache.

    Both folders are scanned before anything is decoded: a folder that cannot be used (absent, empty,
    neither layout, a split or class missing, a CoronaHack CSV without its columns, labels or images)
    raises UserError, one line naming the flag and the path. Files that cannot be used are collected in
    `info["problems"]`, one line per kind of problem (`checks.grouped`; `info["problem_count"]` files
    and rows in all): print each as a warning.

    Target-train images sharing a name, patient or content with the test set are dropped before the
    validation split (`info["train_excluded_overlap"]`; on the real data: 0); source images sharing
    one with validation or test are dropped from pre-training unless allow_overlap (which concerns
    pre-training only: the seed study's leaky arm)."""
    log = log or (lambda *_: None)
    data_root, pretrain_root, size, cache_dir = spec.data_root, spec.pretrain_root, spec.image_size, spec.cache_dir
    val_fraction, seed = spec.val_fraction, spec.split_seed
    info: dict = dict(image_size=size, val_fraction=val_fraction, split_seed=seed, problems=[], problem_count=0)
    problems: list[sources.Problem] = []
    use_source = spec.use_pretrain and pretrain_root is not None
    target_scan = _scanned("--data-root", data_root) if data_root is not None else None
    source_scan = _scanned("--pretrain-root", pretrain_root, spec.source_subset) if use_source else None
    if target_scan is None:
        full_train = synthetic_set("target_train", size, cache_dir)
        test = synthetic_set("target_test", size, cache_dir)
        info["target"] = "synthetic"
    else:
        problems += target_scan.problems
        man = target_scan.manifest
        full_train, probs_tr = _decoded_set(man[man.split == "train"], size, cache_dir, "target-train", quiet)
        test, probs_te = _decoded_set(man[man.split == "test"], size, cache_dir, "target-test", quiet)
        problems += probs_tr + probs_te
        _both_classes(full_train, "--data-root", data_root, "train", probs_tr)
        _both_classes(test, "--data-root", data_root, "test", probs_te)
        info["target"] = str(os.path.abspath(data_root))
    full_train, counts = exclude_leakage(full_train, [test], cache_dir)
    info["train_excluded_overlap"], info["train_excluded_by"] = counts["excluded"], counts
    if counts["excluded"]:
        log(
            f"target train/val pool: excluded {counts['excluded']} images sharing a file name ({counts['by_name']}), "
            f"a patient ({counts['by_patient']}) or their content ({counts['by_content']}) with the test set"
        )
    tr, va = patient_grouped_split(full_train.labels, full_train.manifest["patient"], val_fraction, seed)
    train, val = full_train.subset(tr, "train"), full_train.subset(va, "val")
    test.name = "test"

    source = None
    if source_scan is not None:
        problems += source_scan.problems
        man = source_scan.manifest[source_scan.manifest.split == "train"]
        source, probs = _decoded_set(man, size, cache_dir, "source-train", quiet)
        problems += probs
        _both_classes(source, "--pretrain-root", pretrain_root, "the TRAIN split", probs)
        if not spec.allow_overlap:
            source, counts = exclude_leakage(source, [val, test], cache_dir)
            info["source_excluded_overlap"] = counts["excluded"]
            info["source_excluded_by"] = counts
            log(
                f"pre-training source: excluded {counts['excluded']} images sharing a file name "
                f"({counts['by_name']}), a patient ({counts['by_patient']}) or their content "
                f"({counts['by_content']}) with the target's validation/test sets (allow_overlap keeps them)"
            )
        info["source"] = str(os.path.abspath(pretrain_root))
        source.name = "source"
    elif spec.use_pretrain and data_root is None:
        source = synthetic_set("source_train", size, cache_dir)
        info["source"] = "synthetic"
        source.name = "source"
    elif spec.use_pretrain:
        log("no --pretrain-root given with real target data: training from random initialisation")
    info["problems"], info["problem_count"] = grouped(problems), len(problems)
    for s in (train, val, test) + ((source,) if source is not None else ()):
        info[f"{s.name}_n"] = len(s)
        info[f"{s.name}_manifest_hash"] = manifest_hash(s.manifest)
    assert not set(train.manifest["patient"]) & set(val.manifest["patient"]), "patient on both sides of the split"
    assert not set(full_train.manifest["patient"]) & set(test.manifest["patient"]), "test patient in train/val"
    return StudyData(train, val, test, source, info)
