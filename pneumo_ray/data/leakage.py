"""Leakage audit: which images of one set also appear in another, by file name, by patient id and
by image content (a perceptual hash of the decoded image). Patients come from `sources.patient_id`
(person number + category; `patient_rule_evidence` holds the facts that decide it).

The hash is a 256-bit DCT hash (the sign of the 16×16 lowest DCT coefficients, relative to their
median, of the image reduced to 32×32). Measured on the real data at 64 px: the same image under
two names (CoronaHack vs Kermany) is at Hamming distance 0; copies re-encoded as JPEG q60 or PNG and
resized to other sizes and aspect ratios (up to 1.9:1) are at ≤ 16; of the 17 million pairs of
distinct Kermany images, none is within 32 (the 34 exact duplicate pairs inside Kermany aside), 2
within 40. Two images match when their distance is ≤ MATCH_DISTANCE, midway.

Sets are duck-typed (`ImageSetLike`): anything with `.manifest` (name, patient, label columns) and `.batch(rows)`
(uint8 [n, S, S]), such as `study_data.ImageSet`.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import pandas as pd

from pneumo_ray.data.sources import parse_kermany_name, patient_id

HASH_BITS = 256
MATCH_DISTANCE = 24


class ImageSetLike(Protocol):
    """What the audit reads of a set: its manifest (name, patient, label) and its images by row."""

    manifest: pd.DataFrame

    def batch(self, rows: np.ndarray) -> np.ndarray: ...


def _dct_matrix(n: int) -> np.ndarray:
    i = np.arange(n)
    m = np.cos(np.pi * (2 * i[None, :] + 1) * i[:, None] / (2 * n)) * np.sqrt(2 / n)
    m[0] /= np.sqrt(2)
    return m


def _area_windows(size: int, out: int) -> tuple[np.ndarray, np.ndarray]:
    """Adaptive average pooling's windows along one axis, [floor(i·size/out), ceil((i+1)·size/out)):
    as a 0/1 matrix [out, size] and their lengths (float32)."""
    i = np.arange(out)
    start, end = i * size // out, -(-(i + 1) * size // out)
    j = np.arange(size)
    return ((j >= start[:, None]) & (j < end[:, None])).astype(np.float32), (end - start).astype(np.float32)


def _strided_sum(x: np.ndarray, axis: int) -> np.ndarray:
    """x summed over `axis` by adding its slices in turn (several times faster than ndarray.sum
    over a short inner axis)."""
    parts = np.moveaxis(x, axis, 0)
    total = parts[0].copy()
    for part in parts[1:]:
        total += part
    return total


def _linear_taps(size: int, out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear resampling along one axis (align_corners=False): source index pairs and their weights."""
    src = np.maximum(
        np.float32(size) / np.float32(out) * (np.arange(out, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5),
        np.float32(0),
    )
    i0 = src.astype(np.int64)
    w1 = np.clip(src - i0.astype(np.float32), 0, 1).astype(np.float32)
    return i0, i0 + (i0 < size - 1), np.float32(1) - w1, w1


def _resize32(x: np.ndarray) -> np.ndarray:
    """[N, H, W] float32 (uint8 values) → [N, 32, 32] float32, bit for bit what torch's
    interpolate(size=32) gives: mode "area" (sum / kh / kw per window) from 32 px up, "bilinear" below."""
    n, h, w = x.shape
    if w >= 32 and h % 32 == 0 and w % 32 == 0:  # the usual sizes (64, 224 px): equal windows, strided adds
        # sums of integers below 2**24 are exact in float32, in any order
        kh, kw = h // 32, w // 32
        sums = _strided_sum(_strided_sum(x.reshape(n, h, 32, kw), axis=3).reshape(n, 32, kh, 32), axis=2)
        out = sums / np.float32(kh) / np.float32(kw)
    elif w >= 32:  # windows of unequal length, overlapping: two matrix products with their 0/1 matrices
        (mh, kh), (mw, kw) = _area_windows(h, 32), _area_windows(w, 32)
        cols = (x.reshape(n * h, w) @ mw.T).reshape(n, h, 32)
        sums = (mh @ cols.transpose(1, 0, 2).reshape(h, n * 32)).reshape(32, n, 32).transpose(1, 0, 2)
        out = sums / kh[:, None] / kw[None, :]
    else:
        (h0, h1, wh0, wh1), (w0, w1, ww0, ww1) = _linear_taps(h, 32), _linear_taps(w, 32)
        rows0, rows1 = x[:, h0], x[:, h1]
        top = rows0[:, :, w0] * ww0 + rows0[:, :, w1] * ww1
        bottom = rows1[:, :, w0] * ww0 + rows1[:, :, w1] * ww1
        out = top * wh0[:, None] + bottom * wh1[:, None]
    # C order, as torch returns it: the DCT's matrix products round by memory layout, and a flat image's
    # coefficients tie at the median, where that rounding decides the bit
    return np.ascontiguousarray(out)


def perceptual_hash(images: np.ndarray) -> np.ndarray:
    """[N, S, S] uint8 → [N, 256] bool DCT hash."""
    if len(images) == 0:
        return np.zeros((0, HASH_BITS), bool)
    x = _resize32(np.array(images, np.float32, copy=True)).astype(np.float64)
    d = _dct_matrix(32)
    coef = (d @ x @ d.T)[:, :16, :16].reshape(len(x), -1)
    return coef > np.median(coef[:, 1:], axis=1, keepdims=True)


def set_hashes(images_set: ImageSetLike, chunk: int = 1024) -> np.ndarray:
    n = len(images_set.manifest)
    parts = [perceptual_hash(images_set.batch(np.arange(i, min(i + chunk, n)))) for i in range(0, n, chunk)]
    return np.concatenate(parts) if parts else np.zeros((0, HASH_BITS), bool)


def nearest(
    a: np.ndarray, b: np.ndarray, exclude_self: bool = False, chunk: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """For each hash in `a`, the index of the nearest hash in `b` and its Hamming distance
    (exclude_self: a and b are the same set, an image is not its own match)."""
    if len(b) == 0 or len(a) == 0:
        return np.full(len(a), -1), np.full(len(a), HASH_BITS + 1)
    sa, sb = a.astype(np.float32) * 2 - 1, b.astype(np.float32) * 2 - 1
    idx, dist = np.empty(len(a), np.int64), np.empty(len(a), np.int64)
    for i in range(0, len(a), chunk):
        d = np.rint((HASH_BITS - sa[i : i + chunk] @ sb.T) / 2)
        if exclude_self:
            rows = np.arange(i, min(i + chunk, len(a)))
            d[rows - i, rows] = HASH_BITS + 1
        idx[i : i + chunk] = d.argmin(axis=1)
        dist[i : i + chunk] = d[np.arange(len(d)), idx[i : i + chunk]]
    return idx, dist


def matches(
    a: ImageSetLike,
    b: ImageSetLike,
    hashes_a: np.ndarray | None = None,
    hashes_b: np.ndarray | None = None,
    same: bool = False,
) -> pd.DataFrame:
    """One row per image of set `a`: does it occur in set `b` by name, by patient, by content?"""
    ha = set_hashes(a) if hashes_a is None else hashes_a
    hb = ha if same else (set_hashes(b) if hashes_b is None else hashes_b)
    ma, mb = a.manifest.reset_index(drop=True), b.manifest.reset_index(drop=True)
    idx, dist = nearest(ha, hb, exclude_self=same)
    found = idx >= 0
    out = pd.DataFrame(
        dict(
            name=ma["name"],
            patient=ma["patient"],
            label=ma["label"].astype(int),
            by_name=False if same else ma["name"].isin(set(mb["name"])).to_numpy(),
            by_patient=False if same else ma["patient"].isin(set(mb["patient"])).to_numpy(),
            by_content=dist <= MATCH_DISTANCE,
            content_match=np.where(found, mb["name"].to_numpy()[np.maximum(idx, 0)], None),
            content_match_label=np.where(found, mb["label"].to_numpy()[np.maximum(idx, 0)], -1).astype(int),
            content_distance=dist,
        )
    )
    out.loc[~out["by_content"], ["content_match"]] = None
    out.loc[~out["by_content"], "content_match_label"] = -1
    return out


def audit(sets: dict[str, ImageSetLike]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every ordered pair of named sets (and each set with itself, for duplicates inside it).

    Returns (per-image rows that match something, one summary row per pair)."""
    hashes = {name: set_hashes(s) for name, s in sets.items()}
    rows, summary = [], []
    for a_name, a in sets.items():
        for b_name, b in sets.items():
            same = a_name == b_name
            m = matches(a, b, hashes[a_name], hashes[b_name], same=same)
            any_ = m["by_name"] | m["by_patient"] | m["by_content"]
            summary.append(
                dict(
                    a_set=a_name,
                    b_set=b_name,
                    a_images=len(m),
                    by_name=int(m["by_name"].sum()),
                    by_patient=int(m["by_patient"].sum()),
                    by_content=int(m["by_content"].sum()),
                    any=int(any_.sum()),
                    a_patients=int(a.manifest["patient"].nunique()),
                    patients_shared=0 if same else len(set(a.manifest["patient"]) & set(b.manifest["patient"])),
                    content_label_conflicts=int((m["by_content"] & (m["content_match_label"] != m["label"])).sum()),
                )
            )
            hit = m[any_].copy()
            hit.insert(0, "b_set", b_name)
            hit.insert(0, "a_set", a_name)
            rows.append(hit)
    pairs = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    return pairs, pd.DataFrame(summary)


def leakage_flags(source: ImageSetLike, held_out: list[ImageSetLike]) -> pd.DataFrame:
    """Per source image: shares a file name, a patient, or its content with any held-out set
    (the target's validation and test sets)."""
    hs = set_hashes(source)
    flags = None
    for h in held_out:
        m = matches(source, h, hs)[["by_name", "by_patient", "by_content"]]
        flags = m if flags is None else flags | m
    return flags


def format_summary(summary: pd.DataFrame) -> str:
    s = summary[summary["a_set"] != summary["b_set"]]
    cols = [
        "a_set",
        "b_set",
        "a_images",
        "by_name",
        "by_content",
        "by_patient",
        "any",
        "patients_shared",
        "content_label_conflicts",
    ]
    dup = summary[summary["a_set"] == summary["b_set"]][["a_set", "a_images", "by_content"]]
    return (
        f"images of a_set found in b_set (content: Hamming distance ≤ {MATCH_DISTANCE} of {HASH_BITS} bits)\n"
        + s[cols].to_string(index=False)
        + "\n\nduplicate content inside one set (images with a near-identical other image)\n"
        + dup.rename(columns={"by_content": "with_duplicate"}).to_string(index=False)
    )


def format_split_overlap(summary: pd.DataFrame, train: str, test: str) -> str:
    """One line: what a target's own train and test sets share (patients, file names, content)."""
    s = summary.set_index(["a_set", "b_set"])
    tr, te = s.loc[(train, test)], s.loc[(test, train)]
    return (
        f"{train} vs {test} (patient = person number + category; `--patients` shows why): "
        f"{tr.patients_shared} patients shared ({tr.by_patient} {train} / {te.by_patient} {test} images of "
        f"them), {te.by_name} file names shared, {te.by_content} {test} images with the content of a {train} "
        f"image (Hamming distance ≤ {MATCH_DISTANCE})"
    )


# --- Which patient does a file name name? The evidence behind sources.patient_id -------------------------------
# Kermany's names are `personN_<bacteria|virus>_M` and `[NORMAL2-]IM-NNNN-MMMM`. Whether N is a child (shared by
# both categories) or a number counted per category decides which images are one patient; these facts decide it.

READINGS = ("person number", "person number + category")
_SERIES = ("bacteria", "virus", "IM", "NORMAL2-IM")


def _patient_under(reading: str, name: str) -> str:
    """The patient of `name` under a reading: "person number" joins `personN_bacteria_*` with
    `personN_virus_*` (the rule before this evidence), "person number + category" is `sources.patient_id`."""
    k = parse_kermany_name(name)
    if reading == READINGS[0] and k is not None and k.series == "person":
        return f"person{k.number}"
    return patient_id(name)


def _names(manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per parsed Kermany name: split, series (bacteria, virus, IM, NORMAL2-IM), number, counter."""
    rows = []
    for name, split in zip(manifest["name"], manifest["split"]):
        k = parse_kermany_name(name)
        if k is not None:
            rows.append((split, k.category or k.series, k.number, k.counter))
    return pd.DataFrame(rows, columns=["split", "series", "number", "counter"])


def _spearman(x: pd.Series, y: pd.Series) -> float:
    ok = x.notna() & y.notna()
    if ok.sum() < 3:
        return float("nan")
    return float(np.corrcoef(x[ok].rank(), y[ok].rank())[0, 1])


def _reading_rows(manifest: pd.DataFrame) -> list[tuple]:
    rows = []
    for reading in READINGS:
        patients = manifest["name"].map(lambda n, r=reading: _patient_under(r, n))
        train, test = (patients[manifest["split"] == s] for s in ("train", "test"))
        shared = set(train) & set(test)
        for item, value in (
            ("patients train", train.nunique()),
            ("patients test", test.nunique()),
            ("shared train/test", len(shared)),
            ("train images of shared", train.isin(shared).sum()),
            ("test images of shared", test.isin(shared).sum()),
        ):
            rows.append(("reading", reading, item, value))
    return rows


def _numbers(names: pd.DataFrame, split: str | None = None, series: str | None = None) -> set:
    sel = names[((names["split"] == split) if split else True) & ((names["series"] == series) if series else True)]
    return set(sel["number"])


def _category_rows(names: pd.DataFrame) -> list[tuple]:
    """Person numbers used by both categories, against |B|·|V|/range for two independent numberings."""
    bac, vir = _numbers(names, series="bacteria"), _numbers(names, series="virus")
    span = (max(bac | vir) - min(bac | vir) + 1) if bac | vir else 0
    facts = (
        ("bacteria numbers |B|", len(bac)),
        ("virus numbers |V|", len(vir)),
        ("range of numbers", span),
        ("used by both", len(bac & vir)),
        ("expected by chance |B|·|V|/range", len(bac) * len(vir) / span if span else np.nan),
    )
    return [("both categories", "person numbers", item, value) for item, value in facts]


def _train_test_rows(names: pd.DataFrame) -> list[tuple]:
    """Numbers shared by a train series and a test series; for one series, train numbers inside the
    test's range (0: the test is a block cut out of the numbering)."""
    rows = []
    for a, b in (
        ("bacteria", "bacteria"),
        ("virus", "virus"),
        ("bacteria", "virus"),
        ("virus", "bacteria"),
        ("IM", "IM"),
        ("NORMAL2-IM", "NORMAL2-IM"),
    ):
        train, test = _numbers(names, "train", a), _numbers(names, "test", b)
        rows.append(("train vs test", f"train {a} × test {b}", "numbers shared", len(train & test)))
        if a == b:
            inside = sum(min(test) <= n <= max(test) for n in train) if test else 0
            rows.append(("train vs test", f"train {a} × test {b}", "train numbers inside test range", inside))
    return rows


def _series_rows(names: pd.DataFrame) -> list[tuple]:
    """Per split and series: images, numbers, their range, Spearman(image counter, person number)."""
    rows = []
    for (split, series), g in names.groupby(["split", "series"], sort=False):
        rho = _spearman(g["counter"], g["number"]) if series in ("bacteria", "virus") else np.nan
        for item, value in (
            ("images", len(g)),
            ("numbers", g["number"].nunique()),
            ("min number", g["number"].min()),
            ("max number", g["number"].max()),
            ("spearman(counter, number)", rho),
        ):
            rows.append(("series", f"{split} {series}", item, value))
    return rows


def patient_rule_evidence(manifest: pd.DataFrame) -> pd.DataFrame:
    """The facts that decide what a Kermany file name's person number means, from a manifest's
    `name` and `split` (train/test) columns alone.

    One row per fact: section, group, item, value. Sections: "reading" (patients per split and
    shared by train and test, under each of READINGS), "both categories" (person numbers used by
    bacteria and by virus, against |B|·|V|/range expected of two independent numberings),
    "train vs test" (numbers shared per pair of series), "series" (per split and series: images,
    numbers, their range, Spearman correlation of the image counter with the person number).
    """
    names = _names(manifest)
    rows = _reading_rows(manifest) + _category_rows(names) + _train_test_rows(names) + _series_rows(names)
    ev = pd.DataFrame(rows, columns=["section", "group", "item", "value"]).astype({"value": float})
    order = [f"{split} {x}" for split in ("train", "test") for x in _SERIES]  # series rows: train first, then test
    rank = ev["group"].map({g: i for i, g in enumerate(order)}).where(ev["section"] == "series", -1)
    return ev.iloc[np.argsort(rank.to_numpy(), kind="stable")].reset_index(drop=True)


def _fmt(v: float) -> str:
    if np.isnan(v):
        return "-"
    return f"{int(v)}" if float(v).is_integer() else f"{v:.6f}" if abs(v) <= 1 else f"{v:.0f}"


def _wide(ev: pd.DataFrame, section: str) -> str:
    part = ev[ev["section"] == section]
    t = part.pivot(index="group", columns="item", values="value")
    t = t.loc[list(dict.fromkeys(part["group"])), list(dict.fromkeys(part["item"]))]  # in the table's order
    return t.map(_fmt).rename_axis(index=None, columns=None).to_string()


def _chance_line(both: pd.Series) -> str:
    return (
        f"person numbers used by both bacteria and virus: {_fmt(both['used by both'])}; expected by chance if "
        f"each category is numbered on its own: {both['expected by chance |B|·|V|/range']:.0f} (|B| "
        f"{_fmt(both['bacteria numbers |B|'])} · |V| {_fmt(both['virus numbers |V|'])} / range "
        f"{_fmt(both['range of numbers'])})"
    )


def _decision_line(get: pd.Series) -> str:
    r, shared = get["reading"], get["train vs test"].xs("numbers shared", level="item")
    same = sum(shared[f"train {c} × test {c}"] for c in ("bacteria", "virus"))
    cross = shared["train bacteria × test virus"] + shared["train virus × test bacteria"]
    return (
        f"decision: patient = (person number, category), e.g. person123-bacteria / person123-virus, with "
        f"IM-NNNN and NORMAL2-IM-NNNN as series of their own: each category has its own image counter rising "
        f"with N, the categories share about as many numbers as chance gives, and Kermany split train/test by "
        f"patient, yet the joined reading would put {_fmt(r[READINGS[0], 'shared train/test'])} patients on "
        f"both sides ({_fmt(cross)} of them bacteria on one side and virus on the other, {_fmt(same)} within "
        f"one category) against {_fmt(r[READINGS[1], 'shared train/test'])} per category."
    )


def format_patient_evidence(ev: pd.DataFrame) -> str:
    """The evidence table as text, ending with one line: the chosen definition and why."""
    get = ev.set_index(["section", "group", "item"])["value"].sort_index()
    return "\n".join(
        [
            (
                "patients under each reading of `personN_<category>_M` (Kermany train vs test; IM/NORMAL2-IM: the same "
                "under both)"
            ),
            _wide(ev, "reading"),
            "",
            _chance_line(get["both categories", "person numbers"]),
            "",
            "person / IM numbers of train against those of test",
            _wide(ev, "train vs test"),
            "",
            (
                "per split and series: images, numbers, range, Spearman correlation of the image counter M "
                "(personN_<category>_M) with the person number N"
            ),
            _wide(ev, "series"),
            "",
            _decision_line(get),
        ]
    )
