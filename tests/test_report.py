"""The run report: sections, model card, explanations, fairness, and the commands'
human output, on a small synthetic run directory; one short real run rendered in
headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from common.cli import build_app
from common.config import ModelConfig, RunConfig
from server.report.fairness import UNKNOWN, breakdown, clinical_subgroups

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = ("x", "y", "z")
SITES = ("A1", "B2", "C3")
EPSILON = {"A1": 1.234, "B2": 2.345, "C3": 0.987}
SECTION_IDS = ("data", "curves", "performance", "embeddings", "modalities", "explanations",
               "fairness", "privacy", "comparison", "lineage")


def _dataset(directory: Path, n: int = 150, seed: int = 0) -> Path:
    """Three sites, three classes; mRNA carries the class, clinical carries age, stage
    and race."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True)
    ids = [f"TCGA-{SITES[i % 3]}-{i:04d}" for i in range(n)]
    y = rng.integers(0, 3, n)
    mrna = rng.normal(size=(n, 6)) + np.eye(3, 6)[y] * 3.0
    age = rng.integers(30, 85, n)
    stage = rng.choice([1.0, 1.1, 2.1, 2.2, 3.1, 4.0], n)
    race = rng.choice(["white", "asian", "nan"], n, p=[0.7, 0.2, 0.1])
    (directory / "labels.csv").write_text(
        "patient_id,label\n" + "".join(f"{i},{CLASSES[k]}\n" for i, k in zip(ids, y, strict=True)))
    (directory / "mrna.csv").write_text(
        "patient_id," + ",".join(f"G{j}" for j in range(6)) + "\n"
        + "".join(f"{i}," + ",".join(f"{v:.4f}" for v in row) + "\n"
                  for i, row in zip(ids, mrna, strict=True)))
    (directory / "clinical.csv").write_text(
        "patient_id,years_to_birth,pathologic_stage,race_white,race_asian,race_nan\n"
        + "".join(f"{i},{a},{s},{int(r == 'white')},{int(r == 'asian')},{int(r == 'nan')}\n"
                  for i, a, s, r in zip(ids, age, stage, race, strict=True)))
    return directory


def _trained_model(cfg: RunConfig, fed):
    """The model briefly trained on the pooled sites (a few epochs: fast, not random)."""
    from dataclasses import replace

    from common.model import ModelSpec, build_model
    from common.preprocessing import Standardizer
    from common.training import fit, seed_everything
    from simulations.central import pooled_split

    train, val = pooled_split(fed)
    standardizer = Standardizer.fit(train)
    seed_everything(0)
    model = build_model(ModelSpec.for_schema(cfg.model, train.schema))
    result = fit(model, standardizer.transform(train), standardizer.transform(val),
                 replace(cfg.train, max_epochs=15, patience=15, batch_size=16, lr=0.01), seed=0)
    model.load_state_dict(result.state_dict)
    return model.eval(), standardizer, train.schema


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory) -> Path:
    """A run directory like simulate's, with local DP: records, bundle, rounds."""
    from common.bundle import save_bundle, write_json
    from common.simulated_federation import load_federation

    root = tmp_path_factory.mktemp("report")
    data = _dataset(root / "data")
    cfg = RunConfig.preset("none", data=str(data), min_site_size=5, seed=0,
                           model=ModelConfig(d_model=16, n_heads=2, tokens_per_modality=1))
    fed = load_federation(cfg)
    model, standardizer, schema = _trained_model(cfg, fed)
    run = root / "run"
    record = fed.record()
    save_bundle(run / "model", model_config=cfg.model, schema=schema,
                standardizer=standardizer, state_dict=model.state_dict(),
                lineage={"run_id": "synthetic", "round": 2, "strategy": "fedavg",
                         "data_fingerprints": record["fingerprints"]})
    private = {**cfg.to_dict(), "dp": "local", "epsilon": 3.0}
    write_json(run / "config.json", {"run_id": "synthetic", "run_config": private,
                                     "federation": record})
    rounds = [{"round": r, "train": {"loss": 1.0 / r},
               "val": {"loss": 1.1 / r, "f1_macro": 0.3 * r, "accuracy": 0.3 * r},
               "test": {"f1_macro": 0.3 * r, "loss": 1.2 / r}, "best": r == 2,
               "sites": [{"site": s, "val": {"f1_macro": 0.2 * r + 0.1 * k}}
                         for k, s in enumerate(SITES)]} for r in (1, 2)]
    write_json(run / "metrics.json", {"f1_macro": 0.6, "accuracy": 0.6, "rounds": rounds,
                                      "best_round": 2, "per_site_epsilon": EPSILON,
                                      "central_dp": None, "sites": record["sites"]})
    return run


@pytest.fixture(scope="module")
def written(synthetic_run):
    from server.report import ReportSettings, write_report

    # UMAP's numba compile (about 20 s) is paid by the Chromium test, not here
    return write_report(synthetic_run, ReportSettings(min_group_size=8, ig_steps=16,
                                                      ig_patients_per_class=20, umap=False))


def test_report_has_every_section_and_needs_no_network(written):
    html = written.html.read_text()
    for section in SECTION_IDS:
        assert f'<section id="{section}">' in html, section
    images = re.findall(r'<img src="([^"]+)"', html)
    assert len(images) >= 8 and all(src.startswith("data:image/png;base64,") for src in images)
    assert not re.search(r"(src|href)=\"(https?:)?//", html)
    assert "UMAP was left out" in html and "too small to judge" not in html.split(
        'id="fairness"')[0]


def test_model_card_names_fingerprints_and_epsilon(written, synthetic_run):
    card = written.card.read_text()
    fingerprints = json.loads((synthetic_run / "config.json").read_text())[
        "federation"]["fingerprints"]
    digests = [d for files in fingerprints.values() for d in files.values()]
    assert digests and all(d in card for d in digests)
    for site, eps in EPSILON.items():
        assert f"{site} {eps:.3f}" in card
    assert "budget epsilon 3" in card and "## Fairness" in card


def test_report_metrics_are_the_model_outputs(synthetic_run):
    """Recomputed test metrics come from the bundle on the rebuilt split; attention is the
    model's own (the recomputation matches the block output); the embedding is what the
    head classifies."""
    import torch

    from server.report.inspection import inspect_model
    from server.report.rundir import load_run

    run = load_run(synthetic_run)
    model = run.bundle.build_model()
    out = inspect_model(model, run.test.prepared)
    np.testing.assert_allclose(out.proba, run.bundle.predict_proba(run.test.raw), atol=1e-5)
    head = torch.softmax(model.head(torch.from_numpy(out.embeddings)), dim=-1).detach()
    np.testing.assert_allclose(head.numpy(), out.proba, atol=1e-5)
    assert out.attention_check < 1e-5
    np.testing.assert_allclose(out.attention.sum(axis=1), 1.0, atol=1e-5)
    assert set(run.test.sites) <= set(SITES)
    # The trained model separates the classes the data carry.
    assert (out.proba.argmax(1) == run.test.labels).mean() > 0.6


def test_integrated_gradients_are_complete(synthetic_run):
    from server.report.explanations import explain_classes
    from server.report.rundir import load_run

    run = load_run(synthetic_run)
    model = run.bundle.build_model()
    exp = explain_classes(model, run.test.prepared, run.test.labels, CLASSES, top_k=3)
    assert exp.max_probability_change > 0.1  # attributions have something to add up to
    assert exp.max_completeness_gap < 1e-3
    coarse = explain_classes(model, run.test.prepared, run.test.labels, CLASSES, steps=4)
    assert coarse.max_completeness_gap > exp.max_completeness_gap  # the check measures
    # The class-carrying genes come first: G0 for x, G1 for y, G2 for z.
    for k, cls in enumerate(exp.classes):
        assert cls.top_features[0].feature == f"G{k}", cls.top_features
        assert cls.top_features[0].mean_attribution > 0
        assert cls.modality_share["mrna"] > cls.modality_share["clinical"]


def test_subgroup_gap_is_reproduced_and_small_groups_are_flagged():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    groups = np.array(["a"] * 150 + ["b"] * 145 + ["c"] * 5, dtype=object)
    pred = y.copy()
    wrong = rng.choice(np.arange(150, 295), 58, replace=False)  # b: 40 % wrong
    pred[wrong] = 1 - pred[wrong]
    pred[295:] = 1 - pred[295:]  # c: all wrong, but only 5 patients
    result = breakdown("site", groups, y, pred, 2, min_size=10, metric="accuracy")
    scores = {g.group: g for g in result.groups}
    assert scores["a"].accuracy == 1.0
    assert scores["b"].accuracy == pytest.approx(1 - 58 / 145)
    assert result.gap == pytest.approx(58 / 145)
    assert (result.best, result.worst) == ("a", "b")
    assert [(g.group, g.n) for g in result.too_small] == [("c", 5)]


def test_clinical_subgroups_from_raw_values(synthetic_run):
    from server.report.rundir import load_run

    raw = load_run(synthetic_run).test.raw
    groups = clinical_subgroups(raw)
    assert set(groups) == {"age band", "stage", "race"}
    clinical = raw.features["clinical"]
    names = list(raw.schema.features("clinical"))
    age = clinical[:, names.index("years_to_birth")]
    assert (groups["age band"][age < 50] == "0-49").all()
    assert (groups["age band"][age >= 65] == "65+").all()
    stage = clinical[:, names.index("pathologic_stage")]
    assert (groups["stage"][stage == 4.0] == "stage IV").all()
    assert (groups["stage"][(stage >= 2) & (stage < 3)] == "stage II").all()
    race_nan = clinical[:, names.index("race_nan")] > 0.5
    assert (groups["race"][race_nan] == UNKNOWN).all()
    assert set(groups["race"][~race_nan]) <= {"white", "asian"}


def test_report_command_refuses_a_directory_that_is_not_a_run(tmp_path):
    result = CliRunner().invoke(build_app(), ["report", str(tmp_path)], env={"COLUMNS": "300"})
    assert result.exit_code == 2
    assert "not a run directory (config.json is missing)" in " ".join(result.output.split())


def test_evaluate_prints_tables_or_json(synthetic_run):
    data = json.loads((synthetic_run / "config.json").read_text())["run_config"]["data"]
    args = ["evaluate", "--model", str(synthetic_run), "--data", data]
    table = CliRunner().invoke(build_app(), args, env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    assert "F1 macro" in table.output and "precision" in table.output
    with pytest.raises(json.JSONDecodeError):
        json.loads(table.stdout)
    as_json = CliRunner().invoke(build_app(), [*args, "--json"])
    metrics = json.loads(as_json.stdout)
    assert f"{metrics['f1_macro']:.3f}" in table.output


def test_baselines_print_tables_or_json(monkeypatch):
    import common.simulated_federation
    import simulations.central

    scores = {"logistic_regression": {"accuracy": 0.812, "balanced_accuracy": 0.7,
                                      "f1_macro": 0.654, "f1_weighted": 0.8,
                                      "roc_auc_ovr": 0.9, "fit_seconds": 1.0}}
    monkeypatch.setattr(common.simulated_federation, "load_federation", lambda cfg: None)
    monkeypatch.setattr(simulations.central, "run_baselines_on_split", lambda fed, seed: scores)
    table = CliRunner().invoke(build_app(), ["baselines"], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    assert "logistic_regression" in table.output and "0.654" in table.output
    as_json = CliRunner().invoke(build_app(), ["baselines", "--json"])
    assert json.loads(as_json.stdout)["logistic_regression"]["f1_macro"] == 0.654


@pytest.mark.e2e
def test_short_real_run_report_renders_in_chromium(bundled_dir, tmp_path):
    """train-central on BRCA writes its report; headless Chromium renders every section
    (the screenshot is kept next to the report)."""
    bundled_dir("brca")
    out = tmp_path / "central"
    result = CliRunner().invoke(build_app(), ["train-central", "--data", "brca", "--epochs",
                                              "1", "--out", str(out)],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "F1 macro" in result.output and "report:" in result.output
    html = (out / "report.html").read_text()
    for section in SECTION_IDS:
        assert f'<section id="{section}">' in html, section
    for alt in ("t-SNE of patient embeddings", "UMAP of patient embeddings", "ROC and "
                "precision-recall", "confusion matrix", "modality weights", "attention"):
        assert f'alt="{alt}"' in html, alt
    assert "ROC AUC" in html and "completeness" in html.lower()
    card = (out / "model_card.md").read_text()
    assert "rna.csv" in card and "No differential privacy" in card
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("headless Chromium is not installed (Debian package: chromium)")
    shot = out / "report.png"
    dom = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
         f"file://{out / 'report.html'}"], capture_output=True, text=True, timeout=120)
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                    "--window-size=1200,4000", f"--screenshot={shot}",
                    f"file://{out / 'report.html'}"], capture_output=True, timeout=120)
    assert all(f'id="{section}"' in dom.stdout for section in SECTION_IDS)
    assert shot.stat().st_size > 50_000  # a rendered page, not a blank one
