"""Fairness subgroups named in a dataset manifest (``[fairness]``): parsed, validated,
binned, and a known gap in such a subgroup is reproduced."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.dataset import load_dataset, read_manifest
from common.dataset.manifest import ManifestError, parse_manifest
from server.report.fairness import UNKNOWN, breakdown, clinical_subgroups, named_subgroups

FAIRNESS = """
[fairness]
subgroups = ["age", "smoker", "region"]

[fairness.bins]
age = [40, 60]
"""


def _dataset(directory: Path, manifest: str | None, n: int = 200, seed: int = 0) -> Path:
    """Two classes; clinical carries age, a 0/1 smoker column and one-hot region."""
    rng = np.random.default_rng(seed)
    directory.mkdir()
    ids = [f"P{i:04d}" for i in range(n)]
    y = rng.integers(0, 2, n)
    age = rng.integers(20, 90, n)
    smoker = rng.integers(0, 2, n)
    region = rng.integers(0, 2, n)
    (directory / "labels.csv").write_text(
        "patient_id,label\n" + "".join(f"{i},{'AB'[k]}\n" for i, k in zip(ids, y, strict=True)))
    (directory / "rna.csv").write_text(
        "patient_id,G0,G1\n" + "".join(f"{i},{k + rng.normal():.3f},{rng.normal():.3f}\n"
                                        for i, k in zip(ids, y, strict=True)))
    (directory / "clinical.csv").write_text(
        "patient_id,age,smoker,region_north,region_south\n"
        + "".join(f"{i},{a},{s},{int(r == 0)},{int(r == 1)}\n"
                  for i, a, s, r in zip(ids, age, smoker, region, strict=True)))
    if manifest is not None:
        (directory / "dataset.toml").write_text(
            '[dataset]\nname = "synthetic"\nlabel_names = ["A", "B"]\n' + manifest)
    return directory


def test_known_gap_in_a_manifest_subgroup_is_reproduced(tmp_path):
    directory = _dataset(tmp_path / "d", FAIRNESS)
    manifest = read_manifest(directory)
    assert manifest.subgroups == ("age", "smoker", "region")
    data = load_dataset(directory)
    groups = named_subgroups(data, manifest.subgroups, dict(manifest.subgroup_bins))
    age = data.features["clinical"][:, list(data.schema.features("clinical")).index("age")]
    assert (groups["age"][age < 40] == "< 40").all()
    assert (groups["age"][(age >= 40) & (age < 60)] == "40 to < 60").all()
    assert (groups["age"][age >= 60] == ">= 60").all()
    assert set(groups["smoker"]) == {"0", "1"}
    assert set(groups["region"]) == {"north", "south"}
    # Detection by column name finds only the age band, not smoker or region
    assert set(clinical_subgroups(data)) == {"age band"}

    y = data.labels
    pred = y.copy()
    old = np.flatnonzero(groups["age"] == ">= 60")
    wrong = old[: len(old) * 3 // 10]  # 30 % of the >= 60 band misclassified
    pred[wrong] = 1 - pred[wrong]
    result = breakdown("age", groups["age"], y, pred, 2, min_size=10, metric="accuracy")
    assert (result.best, result.worst) == ("40 to < 60", ">= 60")
    assert result.gap == pytest.approx(len(wrong) / len(old))


def test_unknown_subgroup_column_is_named(tmp_path):
    directory = _dataset(tmp_path / "d", '[fairness]\nsubgroups = ["age", "income"]\n')
    data = load_dataset(directory)
    with pytest.raises(ValueError, match="'income' named in the manifest"):
        named_subgroups(data, read_manifest(directory).subgroups)


def test_missing_clinical_values_are_unknown(tmp_path):
    directory = _dataset(tmp_path / "d", FAIRNESS)
    data = load_dataset(directory)
    data.mask[:5, data.modality_names.index("clinical")] = False
    groups = named_subgroups(data, ["age"], {"age": (40.0, 60.0)})
    assert (groups["age"][:5] == UNKNOWN).all()


@pytest.mark.parametrize(("fairness", "message"), [
    ('[fairness]\nsubgroups = "age"\n', "must be a list"),
    ('[fairness]\nsubgroups = ["age", "age"]\n', "duplicates"),
    ('[fairness]\nsubgroups = ["age"]\n[fairness.bins]\nstage = [1]\n', "not in"),
    ('[fairness]\nsubgroups = ["age"]\n[fairness.bins]\nage = [60, 40]\n', "increasing"),
    ('[fairness]\ncolumns = ["age"]\n', "unknown key"),
])
def test_fairness_table_is_validated(fairness, message):
    import tomllib

    doc = tomllib.loads('[dataset]\nname = "s"\n[modalities]\nrna = "rna.csv"\n' + fairness)
    with pytest.raises(ManifestError, match=message):
        parse_manifest(doc, None)


def test_report_reads_the_test_data_manifest(tmp_path):
    from dataclasses import replace

    from common.config import RunConfig
    from server.report.rundir import _manifest

    cfg = RunConfig.preset("none")
    named = _manifest(replace(cfg, data=str(_dataset(tmp_path / "d", FAIRNESS))))
    assert named.subgroups == ("age", "smoker", "region")
    assert dict(named.subgroup_bins) == {"age": (40.0, 60.0)}
    # A user's directory without dataset.toml gets the convention, whatever its files
    plain = _manifest(replace(cfg, data=str(_dataset(tmp_path / "u", None))))
    assert plain.subgroups == () and plain.source is None
