"""Which manifest a directory gets: shipped manifests only by alias or content fingerprint.

A directory that merely uses the bundled BRCA file names is someone else's data: it is
read by its own ``dataset.toml`` or the convention, never with BRCA's labels file or
class names. The choice is recorded in the report, the data and a run's config.json.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from client.cli import app
from common.dataset import (
    DatasetOrigin,
    clear_caches,
    inspect_dataset,
    load_dataset,
    lookup,
    read_manifest,
    shipped_manifests,
)
from common.paths import BUNDLED, DATA_ENV, bundled_alias, resolve_data_dir

BRCA_CLASSES = ("Luminal A", "HER2-enriched", "Luminal B", "Basal-like", "Normal-like")
IDS = [f"TCGA-{site}-{i:04d}" for i, site in enumerate(["A1", "B6", "A1", "B6", "C8", "C8"])]


@pytest.fixture(autouse=True)
def fresh_caches() -> Iterator[None]:
    clear_caches()
    yield
    clear_caches()


def _table(first: str, columns: list[str], offset: float = 0.0) -> str:
    rows = [
        f"{pid}," + ",".join(f"{i * 0.5 + k + offset:g}" for k in range(len(columns)))
        for i, pid in enumerate(IDS)
    ]
    return "\n".join([",".join([first, *columns]), *rows]) + "\n"


def brca_named_files(**extra: str) -> dict[str, str]:
    """A small foreign dataset using the bundled BRCA file names."""
    return {
        "rna.csv": _table("", ["FOXA1_3169", "ESR1_2099"]),
        "mirna.csv": _table("", ["hsa_mir_1"], 1.0),
        "methylation.csv": _table("", ["GATA3"], 2.0),
        "clinical.csv": _table("Patient_ID", ["years_to_birth"], 3.0),
        **extra,
    }


OWN_LABELS = "patient_id,label\n" + "".join(
    f"{pid},{'tumour' if i % 2 else 'normal'}\n" for i, pid in enumerate(IDS)
)
TARGET = "patient,target\n" + "".join(f"{pid},{float(i % 5)}\n" for i, pid in enumerate(IDS))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_bundled_file_names_with_own_labels_load_by_the_convention(write_files):
    d = write_files(brca_named_files(**{"labels.csv": OWN_LABELS}), name="hospital")
    data, report = inspect_dataset(d)
    assert report.ok, report.findings
    assert report.manifest is None and report.manifest_source == "convention"
    assert data.modality_names == ["clinical", "methylation", "mirna", "rna"]
    assert data.schema.label_names == ("normal", "tumour")
    assert data.labels.tolist() == [0, 1, 0, 1, 0, 1]
    assert data.origin == DatasetOrigin(str(d), "convention", None)
    assert read_manifest(d).chosen_by == "convention"


def test_bundled_file_names_with_a_target_file_never_get_bundled_classes(write_files):
    d = write_files(brca_named_files(**{"labels.csv": OWN_LABELS, "target.csv": TARGET}))
    data = load_dataset(d)
    assert data.schema.label_names == ("normal", "tumour")
    assert not set(BRCA_CLASSES) & set(data.schema.label_names)
    # target.csv is just another file of this directory: a modality by the convention.
    assert "target" in data.modality_names and data.origin.manifest_source == "convention"

    # Without labels.csv the error names the convention's labels file, not BRCA's.
    (d / "labels.csv").unlink()
    _, report = inspect_dataset(d)
    assert [f.file for f in report.errors] == ["labels.csv"]
    data, report = inspect_dataset(d, require_labels=False)
    assert report.ok and data.labels is None and data.schema.label_names == ()


def _bundled_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data root whose ``brca`` alias directory holds small BRCA-layout files."""
    root = tmp_path / "root"
    brca = root / BUNDLED["brca"]
    brca.mkdir(parents=True)
    for name, text in brca_named_files(**{"target.csv": TARGET}).items():
        (brca / name).write_text(text, encoding="utf-8")
    monkeypatch.setenv(DATA_ENV, str(root))
    return brca


def test_alias_directory_gets_the_shipped_manifest(tmp_path, monkeypatch):
    brca = _bundled_root(tmp_path, monkeypatch)
    directory = resolve_data_dir("brca")
    assert bundled_alias(directory) == "brca" and bundled_alias(tmp_path) is None
    data, report = inspect_dataset(directory)
    assert report.ok, report.findings
    shipped = shipped_manifests()["brca"].manifest
    assert report.manifest == shipped.source
    assert report.manifest_source == "alias:brca"
    assert report.manifest_sha256 == _sha256(shipped.source)
    assert data.modality_names == ["mrna", "mirna", "methylation", "clinical"]
    assert data.schema.label_names == BRCA_CLASSES
    assert data.origin.record() == {
        "directory": str(directory),
        "manifest_source": "alias:brca",
        "manifest_sha256": _sha256(shipped.source),
    }

    # The same bytes elsewhere are not the bundled set (their hashes are not BRCA's).
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in brca.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    assert read_manifest(copy).chosen_by == "convention"


@pytest.fixture
def shipped_dir(tmp_path, monkeypatch) -> Path:
    """Shipped manifests read from a temporary folder instead of common/manifests."""
    folder = tmp_path / "manifests"
    folder.mkdir()
    monkeypatch.setattr(lookup, "SHIPPED_MANIFESTS", folder)
    clear_caches()
    return folder


def test_fingerprint_match_gets_the_shipped_manifest(write_files, shipped_dir):
    files = brca_named_files(**{"target.csv": TARGET})
    d = write_files(files, name="exact-copy")
    text = (Path(lookup.__file__).parent.parent / "manifests" / "brca.toml").read_text()
    text = text[: text.index("[fingerprint]")] + "[fingerprint]\n"
    text += "".join(f'"{name}" = "{_sha256(d / name)}"\n' for name in files)
    (shipped_dir / "brca.toml").write_text(text)

    data = load_dataset(d)
    assert data.origin.manifest_source == "fingerprint:brca"
    assert data.origin.manifest_sha256 == _sha256(shipped_dir / "brca.toml")
    assert data.schema.label_names == BRCA_CLASSES
    assert data.modality_names == ["mrna", "mirna", "methylation", "clinical"]

    # One changed byte (here: the labels) and it is somebody else's data.
    (d / "target.csv").write_text(TARGET.replace("1.0", "2.0"))
    assert read_manifest(d).chosen_by == "convention"
    # A missing file is no match either.
    (d / "target.csv").write_text(TARGET)
    (d / "clinical.csv").unlink()
    assert read_manifest(d).chosen_by == "convention"


def test_real_bundled_copy_matches_its_fingerprint(bundled_dir, tmp_path, monkeypatch):
    directory = bundled_dir("brca")
    # Point the aliases elsewhere: the directory is then recognised by content alone.
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    assert bundled_alias(directory) is None
    man = read_manifest(directory)
    assert man.chosen_by == "fingerprint:brca"
    assert man.label_names == BRCA_CLASSES


def test_shipped_manifests_fingerprint_every_file_they_name(bundled_dir):
    for name, entry in shipped_manifests().items():
        assert {rel for rel, _ in entry.fingerprint} == set(entry.manifest.files())
        directory = bundled_dir(name)
        for rel, digest in entry.fingerprint:
            assert _sha256(directory / rel) == digest, (name, rel)


def test_explicit_and_own_manifests_are_recorded(write_files, tmp_path):
    manifest = '[dataset]\nname = "own"\nlabel_names = ["normal", "tumour"]\n'
    d = write_files(brca_named_files(**{"labels.csv": OWN_LABELS, "dataset.toml": manifest}))
    _, report = inspect_dataset(d)
    assert report.manifest_source == "dataset.toml"
    assert report.manifest_sha256 == _sha256(d / "dataset.toml")
    assert report.manifest_summary() == (
        f"dataset.toml, {d / 'dataset.toml'}, sha256 {_sha256(d / 'dataset.toml')}"
    )

    elsewhere = tmp_path / "layout.toml"
    elsewhere.write_text(manifest)
    data = load_dataset(d, manifest=elsewhere)
    assert data.origin.manifest_source == f"--manifest {elsewhere}"
    assert data.origin.manifest_sha256 == _sha256(elsewhere)


def _check(*args: str):
    return CliRunner().invoke(app, ["check", *args], env={"COLUMNS": "250"})


def test_site_check_prints_how_the_layout_was_chosen(write_files, tmp_path, monkeypatch):
    d = write_files(brca_named_files(**{"labels.csv": OWN_LABELS}))
    result = _check("--data", str(d))
    assert result.exit_code == 0, result.output
    assert "manifest: convention (no manifest)" in result.output

    _bundled_root(tmp_path, monkeypatch)
    result = _check("--data", "brca")
    assert result.exit_code == 0, result.output
    sha = shipped_manifests()["brca"].manifest.sha256
    assert "manifest: alias:brca" in result.output and sha in result.output


def test_federation_record_carries_the_data_origin(write_files):
    from common.config import RunConfig
    from common.simulated_federation import SplitSettings, build_federation

    rng = np.random.default_rng(0)
    ids = [f"P{i:03d}" for i in range(80)]
    labels = "patient_id,label\n" + "".join(f"{p},{'AB'[i % 2]}\n" for i, p in enumerate(ids))
    rna = "id,g1,g2\n" + "".join(f"{p},{rng.normal():.4f},{rng.normal():.4f}\n" for p in ids)
    d = write_files({"labels.csv": labels, "rna.csv": rna}, name="fed")
    fed = build_federation(SplitSettings.of(RunConfig(data=str(d), partition="iid", sites=2)))
    assert fed.record()["data_origin"] == {
        "directory": str(d),
        "manifest_source": "convention",
        "manifest_sha256": None,
    }
