from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumo_ray.data import sources


def _jpeg(path: Path, size=(40, 30), mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(
        np.random.default_rng(0).integers(
            0, 255, (size[1], size[0], 3) if mode == "RGB" else size[::-1], dtype=np.uint8
        ),
        mode,
    ).save(path, format="JPEG")


@pytest.mark.parametrize(
    "name,patient",
    [
        # Kermany numbers persons per category: person1000 with bacteria and with virus are two patients
        ("person1000_bacteria_2931.jpeg", "person1000-bacteria"),
        ("person1000_virus_1681.jpeg", "person1000-virus"),
        ("person1_virus_6.jpeg", "person1-virus"),
        ("person78_virus_142_1.jpeg", "person78-virus"),
        ("PERSON0078_Virus_142.jpeg", "person78-virus"),
        ("person12_7.jpeg", "person12"),  # no category in the name: the number alone
        ("IM-0115-0001.jpeg", "IM-0115"),
        ("IM-0011-0001-0002.jpeg", "IM-0011"),
        ("NORMAL2-IM-0115-0001.jpeg", "NORMAL2-IM-0115"),  # its own series: not IM-0115
        (
            "streptococcus-pneumoniae-pneumonia-temporal-evolution-1-day3.jpg",
            "other:streptococcus-pneumoniae-pneumonia-temporal-evolution-1",
        ),
    ],
)
def test_patient_id(name, patient):
    assert sources.patient_id(name) == patient


@pytest.mark.parametrize(
    "name,fields",
    [
        ("person12_virus_44.jpeg", ("person", 12, "virus", 44)),
        ("person447_virus_921_1.jpeg", ("person", 447, "virus", 921)),
        ("IM-0115-0001.jpeg", ("IM", 115, "", 1)),
        ("NORMAL2-IM-0381-0001.jpeg", ("NORMAL2-IM", 381, "", 1)),
    ],
)
def test_parse_kermany_name(name, fields):
    k = sources.parse_kermany_name(name)
    assert (k.series, k.number, k.category, k.counter) == fields
    assert sources.parse_kermany_name("01E392EE-69F9-4E33-BFCE-E5C968654078.jpeg") is None


def test_kermany_real_counts(kermany_root):
    scan = sources.kermany_manifest(kermany_root)
    m = scan.manifest
    assert scan.problems == []
    counts = m.groupby(["split", "label"]).size().to_dict()
    assert counts == {("train", 0): 1341, ("train", 1): 3875, ("test", 0): 234, ("test", 1): 390}
    assert m["path"].is_unique
    assert set(m["category"][m.label == 1]) == {"bacteria", "virus"}
    assert set(m["category"][m.label == 0]) == {""}
    # every pneumonia image is a person<N>, every normal one an IM series
    assert m[m.label == 1]["patient"].str.fullmatch(r"person\d+-(bacteria|virus)").all()
    assert (m["patient"] == m["name"].map(sources.patient_id)).all()
    assert m[m.label == 0]["patient"].str.contains("IM-").all()


def test_kermany_clutter_nested_copy_val_and_unknown_class(tmp_path):
    top = tmp_path / "download" / "chest_xray"
    for root in (top, top / "chest_xray"):  # Kaggle's zip nests a full duplicate
        _jpeg(root / "train" / "NORMAL" / "IM-0001-0001.jpeg")
        _jpeg(root / "train" / "PNEUMONIA" / "person1_bacteria_1.jpeg", (300, 500), "RGB")
        _jpeg(root / "test" / "NORMAL" / "IM-0002-0001.JPEG")  # upper-case extension
        _jpeg(root / "test" / "PNEUMONIA" / "person3_virus_3.jpeg")
    _jpeg(top / "val" / "PNEUMONIA" / "person2_virus_2.jpeg")
    (top / "train" / "NORMAL" / ".DS_Store").write_bytes(b"\0\0")
    _jpeg(tmp_path / "download" / "__MACOSX" / "chest_xray" / "train" / "NORMAL" / "._IM-0001-0001.jpeg")
    _jpeg(top / "train" / "COVID" / "x.jpeg")
    (top / "train" / "NORMAL" / "notes.txt").write_text("hello")
    scan = sources.kermany_manifest(tmp_path / "download")
    m = scan.manifest
    assert sorted(m["name"]) == [
        "IM-0001-0001.jpeg",
        "IM-0002-0001.JPEG",
        "person1_bacteria_1.jpeg",
        "person2_virus_2.jpeg",
        "person3_virus_3.jpeg",
    ]
    assert m.set_index("name")["split"].to_dict() == {
        "IM-0001-0001.jpeg": "train",
        "IM-0002-0001.JPEG": "test",
        "person1_bacteria_1.jpeg": "train",
        "person2_virus_2.jpeg": "train",
        "person3_virus_3.jpeg": "test",
    }
    assert m.set_index("name").loc["person2_virus_2.jpeg", "orig_split"] == "val"
    # the shallow copy is the one kept; the nested one is ignored, not reported as a problem
    assert not m["path"].str.contains("chest_xray/chest_xray").any()
    reasons = {Path(p.path).name: p.reason for p in scan.problems}
    assert "unknown class folder" in reasons["COVID"]
    assert "not an image file" in reasons["notes.txt"]
    assert len(scan.problems) == 2
    assert not any("__MACOSX" in p for p in m["path"])


def test_kermany_same_name_in_two_classes_is_reported_not_guessed(tmp_path):
    _jpeg(tmp_path / "train" / "NORMAL" / "IM-0001-0001.jpeg")
    _jpeg(tmp_path / "train" / "PNEUMONIA" / "IM-0001-0001.jpeg")
    _jpeg(tmp_path / "train" / "NORMAL" / "IM-0003-0001.jpeg")
    _jpeg(tmp_path / "train" / "PNEUMONIA" / "person4_virus_4.jpeg")
    _jpeg(tmp_path / "test" / "NORMAL" / "IM-0005-0001.jpeg")
    _jpeg(tmp_path / "test" / "PNEUMONIA" / "person6_virus_6.jpeg")
    scan = sources.kermany_manifest(tmp_path)
    assert list(scan.manifest[scan.manifest.split == "train"]["name"]) == ["IM-0003-0001.jpeg", "person4_virus_4.jpeg"]
    assert len(scan.problems) == 1 and "label ambiguous" in scan.problems[0].reason


def test_coronahack_real_counts_and_missing_files(coronahack_root):
    scan = sources.coronahack_manifest(coronahack_root)
    m = scan.manifest
    assert len(m) == 5907  # 5910 rows, 3 image files absent
    missing = sorted(Path(p.path).name for p in scan.problems)
    assert missing == sorted(
        [
            "E1724330-1866-4581-8CD8-CEC9B8AFEDDE.jpeg",
            "7E335538-2F86-424E-A0AB-6397783A38D0.jpeg",
            "2C10A413-AABE-4807-8CCE-6A2025594067.jpeg",
        ]
    )
    assert all("image file missing" in p.reason for p in scan.problems)
    counts = m.groupby(["split", "label"]).size().to_dict()
    assert counts == {("train", 0): 1342, ("train", 1): 3941, ("test", 0): 234, ("test", 1): 390}
    assert (m["category"].str.contains("COVID-19")).sum() == 55  # 58 COVID-19 rows, 3 without image


def test_coronahack_covid_subset(coronahack_root):
    m = sources.coronahack_manifest(coronahack_root, subset="covid").manifest
    assert int((m.label == 1).sum()) == 55
    assert m[m.label == 1]["category"].str.contains("COVID-19").all()
    assert int((m.label == 0).sum()) == 1342 + 234


def _coronahack(tmp_path, csv_text):
    (tmp_path / "Chest_xray_Corona_Metadata.csv").write_text(csv_text)
    for split in ("train", "test"):
        (tmp_path / "imgs" / split).mkdir(parents=True, exist_ok=True)


def test_coronahack_wrong_columns_names_file_and_columns(tmp_path):
    _coronahack(tmp_path, "X_ray_image_name,Label,Dataset_type\na.jpeg,Normal,TRAIN\n")
    with pytest.raises(
        ValueError, match=r"Chest_xray_Corona_Metadata.csv: missing column\(s\) \['Label_2_Virus_category'"
    ):
        sources.coronahack_manifest(tmp_path)


def test_coronahack_labels_spellings_unknown_and_unlisted(tmp_path):
    _coronahack(
        tmp_path,
        ",X_ray_image_name,Label,Dataset_type,Label_2_Virus_category,Label_1_Virus_category\n"
        "0,a.jpeg,Normal,TRAIN,,\n1,b.jpeg,Pnemonia,TRAIN,,bacteria\n"
        "2,c.jpeg,Pneumonia,TEST,COVID-19,Virus\n3,d.jpeg,Maybe,TRAIN,,\n",
    )
    for name, split in [
        ("a.jpeg", "train"),
        ("b.jpeg", "train"),
        ("c.jpeg", "test"),
        ("d.jpeg", "train"),
        ("e.jpeg", "train"),
    ]:
        _jpeg(tmp_path / "imgs" / split / name)
    scan = sources.coronahack_manifest(tmp_path)
    assert scan.manifest.set_index("name")["label"].to_dict() == {"a.jpeg": 0, "b.jpeg": 1, "c.jpeg": 1}
    assert any("unknown Label 'Maybe'" in p.reason for p in scan.problems)
    assert any(p.path.endswith("e.jpeg") and "not listed" in p.reason for p in scan.problems)
    assert len(scan.problems) == 2
