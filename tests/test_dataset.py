"""Dataset layer: layout conventions, validation findings, schema alignment.

The helpers here (``site``, ``find``, ``small_schema``) are shared by the other
``test_dataset_*`` files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.dataset import (
    MAX_REPEATS,
    DatasetError,
    Finding,
    ValidationReport,
    inspect_dataset,
    load_dataset,
)
from common.schema import FeatureSchema, SchemaMismatchError

LABELS = "patient_id,label\nP1,A\nP2,B\nP3,A\nP4,B\n"
RNA = "id,g1,g2,g3\nP1,1.0,2.0,3.0\nP2,1.5,2.5,3.5\nP3,0.5,1.0,0.0\nP4,2.0,0.1,0.2\n"
MIRNA = "id,m1,m2\nP1,0.1,0.2\nP2,0.3,0.4\nP3,0.5,0.6\nP4,0.7,0.8\n"


def site(write_files, name: str = "site", **changes: str | None) -> Path:
    """The small valid convention dataset, with files replaced (or removed with None)."""
    files = {"labels.csv": LABELS, "rna.csv": RNA, "mirna.csv": MIRNA}
    for key, text in changes.items():
        fname = key.replace("_csv", ".csv").replace("_toml", ".toml")
        if text is None:
            files.pop(fname)
        else:
            files[fname] = text
    return write_files(files, name=name)


def find(
    report: ValidationReport,
    level: str,
    text: str,
    *,
    file: str | None = None,
    column: str | None = None,
    row: int | None = None,
) -> Finding:
    """The single finding of ``level`` whose message contains ``text`` (and location)."""
    hits = [
        f
        for f in report.findings
        if f.level == level
        and text in f.message
        and (file is None or f.file == file)
        and (column is None or f.column == column)
        and (row is None or f.row == row)
    ]
    assert len(hits) == 1, f"expected one {level} {text!r}; findings: {report.findings}"
    return hits[0]


# ----------------------------------------------------------------- convention layout


def test_convention_directory_loads(write_files):
    d = site(write_files)
    data, report = inspect_dataset(d)
    assert report.ok and report.findings == []
    assert report.manifest is None
    # Modalities are the CSV stems in alphabetical order.
    assert data.modality_names == ["mirna", "rna"]
    assert list(data.patient_ids) == ["P1", "P2", "P3", "P4"]
    assert data.schema.label_names == ("A", "B")
    assert data.labels.tolist() == [0, 1, 0, 1]
    assert data.features["rna"].dtype == np.float32
    np.testing.assert_allclose(data.features["rna"][1], [1.5, 2.5, 3.5])
    assert data.schema.features("mirna") == ("m1", "m2")
    assert data.mask.all()
    assert report.modalities["rna"] == {"file": "rna.csv", "n_features": 3, "n_patients_present": 4}
    assert report.classes == {"A": 2, "B": 2}


def test_integer_labels_become_index_names(write_files):
    d = site(write_files, labels_csv="patient_id,label\nP1,0\nP2,2.0\nP3,0\nP4,1\n")
    data = load_dataset(d)
    assert data.schema.label_names == ("0", "1", "2")
    assert data.labels.tolist() == [0, 2, 0, 1]


def test_load_dataset_raises_readable_error(write_files):
    d = site(write_files, rna_csv=RNA.replace("2.5", "abc"))
    with pytest.raises(DatasetError) as exc:
        load_dataset(d)
    text = str(exc.value)
    assert "rna.csv, column 'g2', row 3: non-numeric value 'abc'" in text
    assert not exc.value.report.ok


# ----------------------------------------------------------------- validation findings


def test_missing_labels_file_is_an_error_naming_the_file(write_files):
    d = site(write_files, labels_csv=None)
    data, report = inspect_dataset(d)
    assert data is None
    f = find(report, "error", "labels file 'labels.csv'", file="labels.csv")
    assert "patient_id,label" in f.message
    # Without labels required, the same directory is fine (prediction).
    data, report = inspect_dataset(d, require_labels=False)
    assert report.ok and data.labels is None and data.n == 4


def test_empty_and_unparsable_files(write_files):
    d = site(write_files, rna_csv="")
    _, report = inspect_dataset(d)
    find(report, "error", "file is empty", file="rna.csv")

    d = site(write_files, name="ragged", rna_csv=RNA.replace("P3,0.5,1.0,0.0", "P3,0.5,1.0,0.0,9"))
    _, report = inspect_dataset(d)
    find(report, "error", "cannot parse", file="rna.csv", row=4)


def test_duplicate_patient_ids(write_files):
    d = site(write_files, rna_csv=RNA.replace("P3,", "P1,"))
    data, report = inspect_dataset(d)
    assert data is None
    f = find(report, "error", "duplicate patient id 'P1'", file="rna.csv")
    assert "rows 2, 4" in f.message and f.row == 4


def test_empty_patient_id(write_files):
    _, report = inspect_dataset(site(write_files, rna_csv=RNA.replace("P3,", ",")))
    find(report, "error", "empty patient id", file="rna.csv", column="id", row=4)


def test_duplicate_column_names(write_files):
    d = site(write_files, rna_csv=RNA.replace("id,g1,g2,g3", "id,g1,g2,g1"))
    _, report = inspect_dataset(d)
    find(report, "error", "duplicate column name", file="rna.csv", column="g1")


def test_patient_not_in_labels_is_an_error(write_files):
    d = site(write_files, mirna_csv=MIRNA + "P9,0.9,1.0\n")
    data, report = inspect_dataset(d)
    assert data is None
    f = find(report, "error", "not in the labels file", file="mirna.csv", row=6)
    assert "'P9' (row 6)" in f.message


def test_labelled_patient_missing_from_a_file_is_masked(write_files):
    d = site(write_files, mirna_csv=MIRNA.replace("P2,0.3,0.4\n", ""))
    data, report = inspect_dataset(d)
    assert report.ok
    f = find(report, "warning", "1 of 4 labelled patient(s) have no row", file="mirna.csv")
    assert "'P2'" in f.message
    j = data.modality_names.index("mirna")
    assert data.mask[:, j].tolist() == [True, False, True, True]
    assert not data.features["mirna"][1].any()


def test_non_numeric_value_names_file_column_row_value(write_files):
    d = site(write_files, rna_csv=RNA.replace("0.1", "n/a?"))
    data, report = inspect_dataset(d)
    assert data is None
    f = find(report, "error", "non-numeric", file="rna.csv", column="g2", row=5)
    assert "'n/a?'" in f.message


def test_nan_and_inf_inside_a_row_are_errors(write_files):
    d = site(write_files, rna_csv=RNA.replace("1.5,2.5,3.5", "1.5,,3.5").replace("0.2", "inf"))
    data, report = inspect_dataset(d)
    assert data is None
    find(report, "error", "missing value", file="rna.csv", column="g2", row=3)
    find(report, "error", "infinite", file="rna.csv", column="g3", row=5)


def test_entirely_empty_row_means_modality_absent(write_files):
    d = site(write_files, mirna_csv=MIRNA.replace("P3,0.5,0.6", "P3,,"))
    data, report = inspect_dataset(d)
    assert report.ok
    f = find(report, "warning", "entirely empty row", file="mirna.csv", row=4)
    assert "'P3'" in f.message
    j = data.modality_names.index("mirna")
    assert data.mask[:, j].tolist() == [True, True, False, True]
    assert np.isfinite(data.features["mirna"]).all()


def test_all_missing_column_is_an_error(write_files):
    text = "id,m1,m2\nP1,0.1,\nP2,0.3,\nP3,0.5,NaN\nP4,0.7,\n"
    _, report = inspect_dataset(site(write_files, mirna_csv=text))
    find(report, "error", "no value at all", file="mirna.csv", column="m2")
    # The column is reported once, not once per cell.
    assert not [f for f in report.findings if "missing value" in f.message]


def test_constant_column_is_only_a_warning(write_files):
    text = "id,m1,m2\nP1,0.1,1\nP2,0.3,1\nP3,0.5,1\nP4,0.7,1\n"
    data, report = inspect_dataset(site(write_files, mirna_csv=text))
    assert report.ok and data is not None
    f = find(report, "warning", "constant column", file="mirna.csv", column="m2")
    assert "one-hot" in f.message


def test_zero_patients_is_an_error(write_files):
    _, report = inspect_dataset(site(write_files, mirna_csv="id,m1,m2\n"))
    find(report, "error", "zero patients", file="mirna.csv")


def test_unparsable_and_unknown_labels(write_files):
    d = site(write_files, labels_csv="patient_id,label\nP1,0\nP2,1.5\nP3,0\nP4,\n")
    _, report = inspect_dataset(d)
    find(report, "error", "non-negative integer", file="labels.csv", column="label", row=3)
    find(report, "error", "empty label", file="labels.csv", row=5)

    manifest = '[dataset]\nname = "x"\nlabel_names = ["A", "B"]\n[modalities]\nrna = "rna.csv"\n'
    d = site(
        write_files,
        name="named",
        dataset_toml=manifest,
        labels_csv="patient_id,label\nP1,A\nP2,C\nP3,1\nP4,7\n",
    )
    _, report = inspect_dataset(d)
    find(report, "error", "'C': unknown class", file="labels.csv", row=3)
    find(report, "error", "'7': class index out of range", file="labels.csv", row=5)
    # 'A' (a declared class name) and '1' (a valid index) are fine.
    assert len(report.errors) == 2


def test_patient_without_any_modality_is_an_error(write_files):
    d = site(
        write_files,
        rna_csv=RNA.replace("P4,2.0,0.1,0.2\n", ""),
        mirna_csv=MIRNA.replace("P4,0.7,0.8", "P4,,"),
    )
    data, report = inspect_dataset(d)
    assert data is None
    f = find(report, "error", "no modality at all", file="labels.csv")
    assert "'P4'" in f.message


def test_repeated_findings_are_capped(write_files):
    rows = "".join(f"P{i},x,y\n" for i in range(1, 5))
    _, report = inspect_dataset(site(write_files, mirna_csv="id,m1,m2\n" + rows))
    bad = [f for f in report.findings if f.message.startswith("non-numeric")]
    assert len(bad) == MAX_REPEATS
    more = find(report, "error", "... and 3 more non-numeric values", file="mirna.csv")
    assert report.findings.index(more) == report.findings.index(bad[-1]) + 1


def test_no_modality_files_is_an_error(write_files):
    _, report = inspect_dataset(write_files({"labels.csv": LABELS}))
    find(report, "error", "no modality file")


def test_not_a_directory(tmp_path):
    data, report = inspect_dataset(tmp_path / "nope")
    assert data is None and "is not a directory" in report.errors[0].message


# ---------------------------------------------------------------------- schema alignment


def small_schema(**extra: list[str]) -> FeatureSchema:
    mods = {"rna": ["g3", "g1", "g2"], "mirna": ["m2", "m1"], **extra}
    return FeatureSchema.build(mods, ["B", "A", "C"])


def test_schema_reorders_features_and_labels(write_files):
    schema = small_schema()
    data = load_dataset(site(write_files), schema=schema)
    assert data.schema == schema
    assert data.modality_names == ["rna", "mirna"]
    np.testing.assert_allclose(data.features["rna"][0], [3.0, 1.0, 2.0])
    np.testing.assert_allclose(data.features["mirna"][3], [0.8, 0.7])
    # "A" is index 1 in the schema's classes.
    assert data.labels.tolist() == [1, 0, 1, 0]


def test_directory_lacking_a_modality_file_loads_masked(write_files):
    schema = small_schema(clinical=["age", "stage"])
    d = site(write_files, mirna_csv=None)
    data, report = inspect_dataset(d, schema=schema)
    assert report.ok
    find(report, "warning", "modality 'mirna', which the model uses, is absent")
    find(report, "warning", "modality 'clinical', which the model uses, is absent")
    assert data.modality_names == ["rna", "mirna", "clinical"]
    assert data.mask[:, 0].all() and not data.mask[:, 1:].any()
    assert data.features["clinical"].shape == (4, 2)
    assert report.modalities["clinical"]["file"] is None


def test_schema_feature_mismatch_names_the_modality(write_files):
    schema = FeatureSchema.build({"rna": ["g1", "g2", "g4"], "mirna": ["m1", "m2"]}, ["A", "B"])
    d = site(write_files)
    with pytest.raises(DatasetError) as exc:
        load_dataset(d, schema=schema)
    text = str(exc.value)
    assert "modality 'rna'" in text and "'g4'" in text and "'g3'" in text
    assert "rna.csv" in text
    # The underlying schema check agrees.
    with pytest.raises(SchemaMismatchError):
        schema.check_features("rna", ["g1", "g2", "g3"])


def test_labels_outside_the_schema_are_an_error(write_files):
    schema = FeatureSchema.build({"rna": ["g1", "g2", "g3"]}, ["A", "Z"])
    _, report = inspect_dataset(site(write_files), schema=schema)
    find(report, "error", "labels ['B'] are not among the model's classes", file="labels.csv")
    find(report, "warning", "modality 'mirna' is not in the model's schema")


def test_integer_labels_without_names_do_not_guess_model_classes(write_files):
    d = site(write_files, labels_csv="patient_id,label\nP1,0\nP2,1\nP3,0\nP4,1\n")
    _, report = inspect_dataset(d, schema=small_schema())
    find(report, "error", "class indices but the dataset has no label_names")
    # A manifest that only names the classes fixes it; modalities follow the convention.
    (d / "dataset.toml").write_text('[dataset]\nname = "s"\nlabel_names = ["A", "B"]\n')
    data = load_dataset(d, schema=small_schema())
    assert data.modality_names == ["rna", "mirna"] and data.mask.all()
    assert [data.schema.label_names[k] for k in data.labels] == ["A", "B", "A", "B"]
