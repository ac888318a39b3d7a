"""Everything a report shows, computed once from a run directory (:class:`ReportContent`);
the HTML page and the model card only lay it out."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from common.phase_clock import PhaseClock
from server.report import figures
from server.report.explanations import Explanations, explain_classes
from server.report.fairness import (
    Breakdown,
    breakdown,
    clinical_subgroups,
    named_subgroups,
)
from server.report.rundir import FEDERATED, LoadedRun, load_run
from server.report.settings import ReportSettings

logger = logging.getLogger(__name__)

UMAP_SKIPPED = "UMAP was left out of this report (report settings: umap off)."


@dataclass
class Privacy:
    mode: str  # none, local, central
    budget_epsilon: float | None
    delta: float
    per_site_epsilon: dict[str, float]
    central: dict[str, Any] | None
    secagg: bool
    max_grad_norm: float


@dataclass
class ReportContent:
    run_dir: Path
    run_id: str
    kind: str
    created: str
    label_names: list[str]
    metrics: dict[str, Any]  # recomputed on the rebuilt test split
    recorded_metrics: dict[str, Any]  # metrics.json at top level
    sites: list[dict]  # per-site training / validation counts and class mix
    dropped_sites: dict[str, int]
    test_source: str
    test_counts: dict[str, int]  # test patients per class
    test_sites: dict[str, int]  # test patients per site
    roc: dict[str, dict[str, float]]
    learned_modality_weights: dict[str, float]
    mean_fusion_weights: dict[str, float]
    attention: np.ndarray
    attention_check: float
    modalities: list[str]
    explanations: Explanations
    fairness: list[Breakdown]
    privacy: Privacy
    comparison: dict[str, dict[str, float]]
    lineage: dict[str, Any]
    config: dict[str, Any]
    figures: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage


def build_content(run_dir: Path, settings: ReportSettings = ReportSettings()) -> ReportContent:
    """Read ``run_dir``, rebuild its test split, and compute every report section."""
    from common.metrics import classification_metrics
    from server.report.inspection import inspect_model

    started = time.perf_counter()
    clock = PhaseClock()
    run = load_run(run_dir)
    clock.lap("load run and test split")
    records, test = run.records, run.test
    labels = list(run.bundle.schema.label_names)
    model = run.bundle.build_model()
    outputs = inspect_model(model, test.prepared)
    metrics = classification_metrics(test.labels, outputs.proba, labels)
    pred = outputs.proba.argmax(axis=1)
    clock.lap("model outputs")
    explanations = explain_classes(model, test.prepared, test.labels, labels,
                                   top_k=settings.top_k, steps=settings.ig_steps,
                                   max_patients=settings.ig_patients_per_class)
    clock.lap("integrated gradients")
    # The manifest's [fairness] subgroups replace detection by column name
    subgroups = (named_subgroups(test.raw, test.subgroups, test.subgroup_bins)
                 if test.subgroups else clinical_subgroups(test.raw))
    groupings = {"site": test.sites, **subgroups}
    fairness = [breakdown(name, groups, test.labels, pred, len(labels),
                          min_size=settings.min_group_size)
                for name, groups in groupings.items()]
    content = ReportContent(
        run_dir=Path(run_dir), run_id=records.run_id, kind=records.kind,
        created=datetime.now(UTC).isoformat(timespec="seconds"), label_names=labels,
        metrics=metrics, recorded_metrics=records.metrics,
        sites=records.federation.get("sites", []),
        dropped_sites=records.federation.get("dropped_sites", {}),
        test_source=test.source,
        test_counts=_counts(np.asarray(labels, dtype=object)[test.labels]),
        test_sites=_counts(test.sites),
        roc={}, learned_modality_weights=model.learned_modality_weights(),
        mean_fusion_weights=dict(zip(model.modalities,
                                     outputs.fusion_weights.mean(axis=0).tolist(), strict=True)),
        attention=outputs.attention, attention_check=outputs.attention_check,
        modalities=list(model.modalities), explanations=explanations, fairness=fairness,
        privacy=_privacy(run), comparison=_comparison(records.metrics),
        lineage=_lineage(run), config=records.config.get("run_config", {}),
    )
    clock.lap("fairness")
    _add_figures(content, run, outputs, settings, clock)
    if not settings.umap:
        content.notes.append(UMAP_SKIPPED)
    content.seconds = time.perf_counter() - started
    content.timings = clock.phases
    return content


def _add_figures(content: ReportContent, run: LoadedRun, outputs: Any,
                 settings: ReportSettings, clock: PhaseClock) -> None:
    labels = content.label_names
    figs = content.figures
    if content.sites:
        figs["class_mix"] = figures.class_mix(content.sites, labels)
    metrics = run.records.metrics
    if content.kind == FEDERATED and metrics.get("rounds"):
        figs["curves"] = figures.round_curves(metrics["rounds"], "round")
    elif metrics.get("history"):
        figs["curves"] = figures.round_curves(metrics["history"], "epoch")
    figs["roc_pr"], content.roc = figures.roc_pr(run.test.labels, outputs.proba, labels)
    figs["confusion"] = figures.confusion(np.asarray(content.metrics["confusion_matrix"]),
                                          labels)
    clock.lap("figures")
    colourings = {"subtype": np.asarray(labels, dtype=object)[run.test.labels],
                  "site": run.test.sites}
    points = _tsne(outputs.embeddings, settings.seed)
    clock.lap("t-SNE")
    if points is not None:
        figs["tsne"] = figures.embedding_map(points, colourings, "t-SNE")
    if settings.umap:
        points = _umap(outputs.embeddings, settings.seed, settings.umap_epochs)
        clock.lap("UMAP")
        if points is not None:
            figs["umap"] = figures.embedding_map(points, colourings, "UMAP")
    figs["modality_weights"] = figures.bars(content.learned_modality_weights,
                                            "learned fusion weights (all modalities present)",
                                            "weight")
    figs["attention"] = figures.heatmap(content.attention, content.modalities,
                                        content.modalities,
                                        "mean cross-modal attention: query modality (row) to "
                                        "key (column)")
    shares = [[c.modality_share.get(m, 0.0) for m in content.modalities]
              for c in content.explanations.classes if c.n_patients]
    if shares:
        figs["ig_modality"] = figures.heatmap(
            np.array(shares), [c.label for c in content.explanations.classes if c.n_patients],
            content.modalities, "share of |integrated gradients| per modality")


def _tsne(embeddings: np.ndarray, seed: int) -> np.ndarray | None:
    from sklearn.manifold import TSNE

    n = len(embeddings)
    if n < 5:
        return None
    perplexity = float(min(30, (n - 1) / 3))
    return TSNE(perplexity=perplexity, init="pca", random_state=seed,
                max_iter=500).fit_transform(embeddings.astype(np.float64))


def _umap(embeddings: np.ndarray, seed: int, epochs: int) -> np.ndarray | None:
    """UMAP with a fixed seed: reproducible (single-threaded, as umap-learn is when seeded).

    The neighbours are exact (scikit-learn), handed to UMAP precomputed: a report's few
    hundred patients need no approximate search, and skipping pynndescent's JIT
    compilation saves about 11 s per process."""
    import warnings

    from sklearn.neighbors import NearestNeighbors

    n = len(embeddings)
    if n < 5:
        return None
    points = embeddings.astype(np.float64)
    k = min(15, n - 1)
    distances, indices = NearestNeighbors(n_neighbors=k).fit(points).kneighbors(points)
    with warnings.catch_warnings():
        # "n_jobs overridden to 1 by setting random_state": the seed is the point
        warnings.simplefilter("ignore", UserWarning)
        from umap import UMAP  # imports numba: only when a report draws UMAP

        reducer = UMAP(n_neighbors=k, random_state=seed, n_epochs=epochs, low_memory=True,
                       init="spectral" if n > 16 else "random",
                       precomputed_knn=(indices, distances, None))
        return reducer.fit_transform(points)


def _counts(values: np.ndarray) -> dict[str, int]:
    names, counts = np.unique(np.asarray(values).astype(str), return_counts=True)
    return {str(n): int(c) for n, c in zip(names, counts, strict=True)}


def _privacy(run: LoadedRun) -> Privacy:
    cfg, metrics = run.records.config.get("run_config", {}), run.records.metrics
    mode = cfg.get("dp", "none") if run.records.kind == FEDERATED else "none"
    return Privacy(mode=mode, budget_epsilon=cfg.get("epsilon") if mode != "none" else None,
                   delta=float(cfg.get("delta", 0.0)),
                   per_site_epsilon=metrics.get("per_site_epsilon") or {},
                   central=metrics.get("central_dp"), secagg=bool(cfg.get("secagg")),
                   max_grad_norm=float(cfg.get("max_grad_norm", 0.0)))


def _comparison(metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
    from common.metrics import METRIC_KEYS

    rows = {}
    comparison = metrics.get("comparison", {})
    if "centralized" in comparison:
        rows["centralized (pooled data, no DP)"] = comparison["centralized"]
    rows.update(comparison.get("baselines", {}))
    return {name: {k: m.get(k, float("nan")) for k in METRIC_KEYS} for name, m in rows.items()}


def _lineage(run: LoadedRun) -> dict[str, Any]:
    fed = run.records.federation
    recorded = fed.get("fingerprints") or run.bundle.lineage.get("data_fingerprints", {})
    return {
        "run_id": run.records.run_id,
        "model_round": run.bundle.lineage.get("round", run.bundle.lineage.get("epoch")),
        "strategy": run.bundle.lineage.get("strategy"),
        "schema_sha256": run.records.config.get("schema_sha256")
        or run.bundle.schema.content_hash(),
        "test_ids_sha256": fed.get("test_ids_sha256"),
        "data_origin": fed.get("data_origin"),
        "data_fingerprints": recorded,
        "fingerprints_match_now": recorded == run.fingerprints_now if recorded else None,
    }
