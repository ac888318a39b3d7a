"""End to end on the real TCGA BRCA data: a short Flower simulation, then evaluation.

The test writes a training directory and a test directory in the project's own dataset
format (in a temporary folder, never committed: the BRCA licence forbids modified
copies in the repository). The test directory has no methylation file at all, so the
run exercises a global test split that lacks a modality the model knows.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from common.bundle import load_bundle
from common.config import RunConfig
from common.dataset import load_dataset
from common.partition import holdout_split
from common.paths import resolve_data_dir

pytestmark = pytest.mark.e2e

MISSING = "methylation"


@pytest.fixture(scope="module")
def brca_dirs(tmp_path_factory):
    try:
        source = resolve_data_dir("brca")
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    data = load_dataset(source)
    pool, test = holdout_split(data.labels, seed=0)
    root = tmp_path_factory.mktemp("brca-format")
    for name, rows, modalities in (
        ("train", pool, data.modality_names),
        ("test", test, [m for m in data.modality_names if m != MISSING]),
    ):
        folder = root / name
        folder.mkdir()
        ids = data.patient_ids[rows]
        for m in modalities:
            frame = pd.DataFrame(data.features[m][rows], index=ids,
                                 columns=list(data.schema.features(m)))
            frame.index.name = "patient_id"
            frame.to_csv(folder / f"{m}.csv")
        labels = [data.schema.label_names[k] for k in data.labels[rows]]
        pd.DataFrame({"patient_id": ids, "label": labels}).to_csv(folder / "labels.csv",
                                                                   index=False)
    return root / "train", root / "test", data


@pytest.fixture(scope="module")
def run_dir(brca_dirs, tmp_path_factory):
    from simulations.runner import simulate

    train_dir, test_dir, _ = brca_dirs
    out = tmp_path_factory.mktemp("run") / "sim"
    cfg = RunConfig.preset(
        "none", data=str(train_dir), test_data=str(test_dir), partition="site", sites=4, rounds=3,
        local_epochs=2, seed=0, out=str(out),
    )
    os.environ.setdefault("RAY_DISABLE_IMPORT_WARNING", "1")
    return simulate(cfg, compare=False, show_progress=False)


def test_run_directory_is_complete(run_dir):
    for name in ("config.json", "metrics.json", "rounds.png", "confusion_matrix.png",
                 "model/bundle.json", "model/weights.pt", "model/schema.json",
                 "model/standardizer.npz", "checkpoint/global.pt", "checkpoint/state.json"):
        assert (run_dir / name).is_file(), name
        assert (run_dir / name).stat().st_size > 0, name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("accuracy", "balanced_accuracy", "f1_macro", "f1_weighted", "roc_auc_ovr"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert len(metrics["rounds"]) == 3
    assert sum(r.get("best", False) for r in metrics["rounds"]) == 1
    assert len(metrics["sites"]) == 4
    assert all("val" in s["best_round"] for s in metrics["sites"])
    config = json.loads((run_dir / "config.json").read_text())
    assert config["run_config"]["seed"] == 0
    assert config["federation"]["fingerprints"]  # data manifest hashes recorded
    assert config["federation"]["n_test"] == metrics["test"]["n"]


def test_global_model_beats_majority_rate(run_dir, brca_dirs):
    _, test_dir, _ = brca_dirs
    metrics = json.loads((run_dir / "metrics.json").read_text())
    labels = pd.read_csv(test_dir / "labels.csv")["label"]
    majority = labels.value_counts(normalize=True).iloc[0]
    assert metrics["accuracy"] > majority + 0.05
    assert metrics["f1_macro"] > 0.4  # majority-class F1 macro would be about 0.14


def test_best_round_chosen_by_validation_not_test(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    keys = [(r["val"]["f1_macro"], -r["val"]["loss"]) for r in metrics["rounds"]]
    best = next(r for r in metrics["rounds"] if r["best"])
    assert (best["val"]["f1_macro"], -best["val"]["loss"]) == max(keys)


def test_bundle_predicts_without_the_missing_modality(run_dir, brca_dirs, caplog):
    _, test_dir, _ = brca_dirs
    bundle = load_bundle(run_dir)
    assert MISSING in bundle.schema.modality_names
    test = load_dataset(test_dir, schema=bundle.schema)
    assert not test.mask[:, bundle.schema.modality_names.index(MISSING)].any()
    proba = bundle.predict_proba(test)
    assert proba.shape == (test.n, bundle.schema.n_classes)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)


def test_evaluate_command_prints_metrics(run_dir, brca_dirs):
    from common.cli import build_app

    _, test_dir, _ = brca_dirs
    result = CliRunner().invoke(build_app(), ["evaluate", "--model", str(run_dir),
                                      "--data", str(test_dir), "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert MISSING not in metrics["modalities_present"]
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(saved["accuracy"])


def test_evaluate_rejects_wrong_feature_names(run_dir, brca_dirs, tmp_path):
    from common.cli import build_app

    _, test_dir, _ = brca_dirs
    for f in test_dir.iterdir():
        text = f.read_text()
        if f.name == "mrna.csv":
            header, rest = text.split("\n", 1)
            text = header.replace(header.split(",")[1], "NOT_A_GENE", 1) + "\n" + rest
        (tmp_path / f.name).write_text(text)
    result = CliRunner().invoke(build_app(), ["evaluate", "--model", str(run_dir),
                                      "--data", str(tmp_path)])
    assert result.exit_code != 0
    assert "NOT_A_GENE" in result.output and "mrna" in result.output


def test_privacy_audit_command(run_dir, brca_dirs, tmp_path):
    """Members are every site's training patients; non-members the test patients (here
    a separate directory that lacks a modality)."""
    from common.cli import build_app

    _, test_dir, _ = brca_dirs
    out = tmp_path / "audit.json"
    result = CliRunner().invoke(build_app(), ["audit", "privacy", "--model", str(run_dir),
                                      "--json", str(out)])
    assert result.exit_code == 0, result.output
    (audit,) = json.loads(out.read_text())
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert audit["members"] == sum(s["n_train"] for s in saved["sites"])
    assert audit["nonmembers"] == load_dataset(test_dir).n
    for attack in ("loss_attack", "likelihood_ratio_attack"):
        assert 0.0 <= audit[attack]["auc"] <= 1.0
        assert 0.0 <= audit[attack]["tpr_at_1pct_fpr"] <= 1.0
    assert "loss AUC" in result.output


def test_privacy_audit_refuses_a_directory_that_is_not_a_run(tmp_path):
    from common.cli import build_app

    result = CliRunner().invoke(build_app(), ["audit", "privacy", "--model", str(tmp_path)])
    assert result.exit_code == 2
    assert "config.json" in result.output
