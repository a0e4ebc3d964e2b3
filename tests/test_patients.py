"""One patient definition (`sources.patient_id`: person number + category) and the evidence for it.

The real-data numbers are those of `python -m study.audit --patients --data-root ../shared/data/chest_xray`.
"""

import pandas as pd
import pytest

from pneumo_ray.data import leakage as audit
from pneumo_ray.data import sources
from pneumo_ray.data.split import patient_grouped_split
from study.audit import main as audit_main


def _evidence(manifest: pd.DataFrame) -> pd.Series:
    return audit.patient_rule_evidence(manifest).set_index(["section", "group", "item"])["value"].sort_index()


def _toy() -> pd.DataFrame:
    names = [
        ("person1_bacteria_1.jpeg", "train"),
        ("person1_virus_1.jpeg", "test"),
        ("person2_bacteria_2.jpeg", "train"),
        ("person2_bacteria_3.jpeg", "train"),
        ("person3_virus_2.jpeg", "train"),
        ("IM-0001-0001.jpeg", "test"),
        ("NORMAL2-IM-0001-0001.jpeg", "train"),
        ("ABC-day1.jpg", "train"),
    ]
    return pd.DataFrame(names, columns=["name", "split"])


def test_evidence_on_a_toy_file_list():
    ev = _evidence(_toy())
    joined, chosen = ev["reading", "person number"], ev["reading", "person number + category"]
    # joined, person1 is on both sides (bacteria in train, virus in test); per category no one is
    assert (joined["shared train/test"], joined["train images of shared"], joined["test images of shared"]) == (1, 1, 1)
    assert (chosen["patients train"], chosen["patients test"], chosen["shared train/test"]) == (5, 2, 0)
    assert joined["patients train"] == 5  # person1..3, NORMAL2-IM-0001, other:abc
    assert ev["both categories", "person numbers", "used by both"] == 1  # bacteria {1, 2}, virus {1, 3}
    assert ev["both categories", "person numbers", "expected by chance |B|·|V|/range"] == 2 * 2 / 3
    assert ev["train vs test", "train bacteria × test virus", "numbers shared"] == 1
    assert ev["series", "train bacteria", "images"] == 3 and ev["series", "train bacteria", "max number"] == 2
    text = audit.format_patient_evidence(audit.patient_rule_evidence(_toy()))
    assert text.splitlines()[-1].startswith("decision: patient = (person number, category)")


@pytest.fixture(scope="module")
def kermany(kermany_root) -> pd.DataFrame:
    return sources.kermany_manifest(kermany_root).manifest


def test_real_evidence_table(kermany):
    ev = _evidence(kermany)
    readings = ev["reading"].unstack()[
        ["patients train", "patients test", "shared train/test", "train images of shared", "test images of shared"]
    ]
    assert readings.loc["person number"].tolist() == [2846, 427, 170, 457, 320]
    assert readings.loc["person number + category"].tolist() == [3654, 428, 0, 0, 0]
    both = ev["both categories", "person numbers"]
    assert (both["bacteria numbers |B|"], both["virus numbers |V|"], both["range of numbers"]) == (1430, 1216, 1945)
    assert both["used by both"] == 979 and round(both["expected by chance |B|·|V|/range"]) == 894
    shared = ev["train vs test"].xs("numbers shared", level="item")
    assert shared.to_dict() == {
        "train bacteria × test bacteria": 0,
        "train virus × test virus": 0,
        "train bacteria × test virus": 107,
        "train virus × test bacteria": 63,
        "train IM × test IM": 0,
        "train NORMAL2-IM × test NORMAL2-IM": 0,
    }
    inside = ev["train vs test"].xs("train numbers inside test range", level="item")
    assert inside["train bacteria × test bacteria"] == 0  # the test's bacteria: one block cut out of the numbering
    assert inside["train IM × test IM"] == inside["train NORMAL2-IM × test NORMAL2-IM"] == 0
    series = ev["series"].unstack()
    assert series.loc["test bacteria", ["min number", "max number"]].tolist() == [78, 175]
    assert (
        series.loc[["train bacteria", "train virus", "test bacteria", "test virus"], "spearman(counter, number)"]
        > 0.9998
    ).all()


def test_real_patients_disjoint_across_train_val_test(kermany):
    train, test = kermany[kermany.split == "train"].reset_index(drop=True), kermany[kermany.split == "test"]
    assert (train.patient.nunique(), test.patient.nunique()) == (3654, 428)
    assert not set(train.patient) & set(test.patient)
    tr, va = patient_grouped_split(train.label, train.patient, 0.2, seed=0)
    p_tr, p_va = set(train.patient[tr]), set(train.patient[va])
    assert (len(p_tr), len(p_va), len(tr), len(va)) == (2919, 735, 4172, 1044)
    assert not p_tr & p_va and not p_va & set(test.patient) and not p_tr & set(test.patient)


def test_real_coronahack_patients_use_the_same_rule(coronahack_root):
    m = sources.coronahack_manifest(coronahack_root).manifest
    assert (m["patient"] == m["name"].map(sources.patient_id)).all()
    assert m["patient"].str.fullmatch(r"person\d+-(bacteria|virus)").sum() == (m["name"].str.startswith("person")).sum()


def test_cli_patients(kermany_root, capsys):
    assert audit_main(["--patients", "--data-root", str(kermany_root)]) == 0
    out = capsys.readouterr().out
    assert "person number + category" in out and "spearman" in out
    assert out.strip().splitlines()[-1].startswith("decision: patient = (person number, category)")
    assert "170 patients on both sides" in out.splitlines()[-1]


def test_cli_patients_needs_data_root(capsys):
    from study.common import run_main

    assert run_main(audit_main, ["--patients"]) == 2
    assert capsys.readouterr().err.startswith("error: --patients needs --data-root")
