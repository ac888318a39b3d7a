"""Cross-validation: fold assignment, fold runs, records and summary, the ``cv`` command."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from common.config import ModelConfig, RunConfig
from common.metrics import METRIC_KEYS
from simulations.cv import FOLD_FILE, SUMMARY_FILE, CvSettings, run_cv
from simulations.cv_folds import assign_folds

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = ("x", "y", "z")
SITES = ("A1", "B2", "C3")


def _dataset(directory: Path, n: int = 120, seed: int = 0) -> Path:
    """Three TCGA-like sites of unequal class mixes; mRNA carries the class."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True)
    ids = [f"TCGA-{SITES[i % 3]}-{i:04d}" for i in range(n)]
    y = np.array([(i // 3 + i % 3) % 3 if i % 4 else 0 for i in range(n)])
    mrna = rng.normal(size=(n, 6)) + np.eye(3, 6)[y] * 3.0
    (directory / "labels.csv").write_text(
        "patient_id,label\n" + "".join(f"{i},{CLASSES[k]}\n" for i, k in zip(ids, y, strict=True)))
    (directory / "mrna.csv").write_text(
        "patient_id," + ",".join(f"G{j}" for j in range(6)) + "\n"
        + "".join(f"{i}," + ",".join(f"{v:.4f}" for v in row) + "\n"
                  for i, row in zip(ids, mrna, strict=True)))
    return directory


def _cfg(data: Path, **settings) -> RunConfig:
    return RunConfig.preset("none", data=str(data), min_site_size=5, rounds=2, local_epochs=1,
                            model=ModelConfig(d_model=16, n_heads=2, tokens_per_modality=1),
                            **settings)


def _fake_simulate(calls: list):
    """Stands in for the Flower simulation: builds the federation from the run config,
    as every Flower process does, and scores a constant prediction on its test split."""
    from common.metrics import classification_metrics
    from common.simulated_federation import load_federation

    def simulate(cfg, *, compare, show_progress):
        fed = load_federation(cfg)
        calls.append((cfg, fed))
        n_classes = len(fed.pool.schema.label_names)
        proba = np.full((fed.test.n, n_classes), 1.0 / n_classes)
        proba[:, 0] += 0.1
        run = Path(cfg.out)
        run.mkdir(parents=True)
        m = classification_metrics(fed.test.labels, proba / proba.sum(1, keepdims=True),
                                   fed.pool.schema.label_names)
        (run / "metrics.json").write_text(json.dumps({**m, "best_round": 1}))
        return run
    return simulate


def test_folds_are_disjoint_cover_and_stratified_within_groups():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 200)
    groups = rng.choice(np.array(["A", "B", "C", "D"]), 200)
    plan = assign_folds(labels, 5, seed=3, groups=groups)
    tests = [set(plan.test_rows(k).tolist()) for k in range(5)]
    assert set().union(*tests) == set(range(200))
    assert sum(len(t) for t in tests) == 200
    sizes = [len(t) for t in tests]
    assert max(sizes) - min(sizes) <= 4
    for g in "ABCD":
        for c in range(3):
            per_fold = Counter(plan.fold_of[(groups == g) & (labels == c)].tolist())
            counts = [per_fold.get(k, 0) for k in range(5)]
            assert max(counts) - min(counts) <= 1, (g, c, counts)
    again = assign_folds(labels, 5, seed=3, groups=groups)
    assert np.array_equal(plan.fold_of, again.fold_of)
    assert not np.array_equal(plan.fold_of, assign_folds(labels, 5, seed=4, groups=groups).fold_of)


@pytest.mark.parametrize(("k", "message"), [(1, "at least 2"), (7, "smallest class")])
def test_folds_reject_impossible_counts(k, message):
    labels = np.array([0] * 20 + [1] * 6)
    with pytest.raises(ValueError, match=message):
        assign_folds(labels, k, seed=0)


def test_cv_writes_k_folds_with_test_folds_outside_training(tmp_path, monkeypatch):
    import simulations.runner

    calls: list = []
    monkeypatch.setattr(simulations.runner, "simulate", _fake_simulate(calls))
    data = _dataset(tmp_path / "data")
    run_dir = tmp_path / "cv"
    summary = run_cv(_cfg(data), CvSettings(folds=3, mode="both"), run_dir,
                     show_progress=False)

    records = [json.loads((run_dir / f"fold-{k}" / FOLD_FILE).read_text()) for k in (1, 2, 3)]
    all_ids = [line.split(",")[0] for line in
               (data / "labels.csv").read_text().splitlines()[1:]]
    tests = [set(r["test_ids"]) for r in records]
    assert sum(len(t) for t in tests) == len(all_ids)
    assert set().union(*tests) == set(all_ids)  # disjoint (sizes add up) and covering
    for record, test in zip(records, tests, strict=True):
        assert record["seed"] == 0 and record["fold_seed"] == 0
        listed = set((run_dir / f"fold-{record['fold']}" / "test_ids.txt").read_text().split())
        assert listed == test
        for site in record["sites"]:
            seen = set(site["train_ids"]) | set(site["val_ids"])
            assert not seen & test  # the test fold is never trained or validated on
            assert not set(site["train_ids"]) & set(site["val_ids"])
            # Federated folds keep every patient at the site of its barcode.
            assert {pid[5:7] for pid in seen} == {site["site"]}
        assert set(record["metrics"]) == {"federated", "central"}
    # The federated run of each fold was built on exactly that fold's test patients.
    assert [set(fed.test.patient_ids.tolist()) for _, fed in calls] == tests
    assert (run_dir / "fold-1" / "central" / "model").is_dir()

    written = json.loads((run_dir / SUMMARY_FILE).read_text())
    assert written["summary"] == summary["summary"]
    for model in ("federated", "central"):
        for key in METRIC_KEYS:
            values = [r["metrics"][model][key] for r in records]
            entry = summary["summary"][model][key]
            assert entry["values"] == values
            assert entry["mean"] == pytest.approx(np.mean(values))
            assert entry["std"] == pytest.approx(np.std(values, ddof=1))


def test_cv_central_on_pooled_folds_without_site_codes(tmp_path):
    data = _dataset(tmp_path / "data", n=60)
    summary = run_cv(_cfg(data, partition="iid", sites=2), CvSettings(folds=2, mode="central"),
                     tmp_path / "cv", show_progress=False)
    assert summary["grouped_by"] == "none" and list(summary["summary"]) == ["central"]
    assert len(summary["summary"]["central"]["f1_macro"]["values"]) == 2


@pytest.mark.parametrize(("args", "message"), [
    (["--folds", "1"], "at least 2"),
    (["--folds", "500"], "more than"),
    (["--mode", "sideways"], "--mode must be one of"),
    (["--model", "nonesuch"], "nonesuch"),
])
def test_cv_command_rejects_bad_options(tmp_path, args, message):
    from common.cli import build_app

    data = _dataset(tmp_path / "data", n=30)
    # Bounded work in case an option were wrongly accepted: one epoch, centralized only.
    result = CliRunner().invoke(build_app(), ["cv", "--data", str(data), "--out",
                                              str(tmp_path / "cv"), "--mode", "central",
                                              "--rounds", "1", "--local-epochs", "1", *args])
    assert not (tmp_path / "cv" / "fold-1").exists()
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and message in result.output


def test_cv_command_rejects_missing_data(tmp_path):
    from common.cli import build_app

    result = CliRunner().invoke(build_app(), ["cv", "--data", str(tmp_path / "absent")])
    assert result.exit_code == 2 and "error:" in result.output


@pytest.mark.e2e
def test_cv_on_brca_two_folds_federated(tmp_path, bundled_dir):
    """The real simulation engine on each fold of the bundled BRCA cohort."""
    from common.cli import build_app

    brca = bundled_dir("brca")
    out = tmp_path / "cv"
    result = CliRunner().invoke(build_app(), [
        "cv", "--data", str(brca), "--folds", "2", "--mode", "federated", "--rounds", "1",
        "--local-epochs", "1", "--sites", "3", "--json", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / SUMMARY_FILE).read_text())["summary"]["federated"]
    assert len(summary["f1_macro"]["values"]) == 2
    for k in (1, 2):
        metrics = json.loads((out / f"fold-{k}" / "federated" / "metrics.json").read_text())
        assert metrics["f1_macro"] == summary["f1_macro"]["values"][k - 1]
        config = json.loads((out / f"fold-{k}" / "federated" / "config.json").read_text())
        assert config["run_config"]["test_ids"].endswith(f"fold-{k}/test_ids.txt")
    # The last fold's federated run is reported in the cv directory itself.
    html = (out / "report.html").read_text()
    assert "<html" in html.lower() and (out / "model_card.md").is_file()
