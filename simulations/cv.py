"""Stratified k-fold cross-validation of the federated and the centralized model.

A fold run is a normal run whose test split is fixed by the fold: the fold's patients
are written to ``fold-K/test_ids.txt`` and named by ``RunConfig.test_ids``, so the
simulated federation (every Flower process builds it from the run config) holds the
other patients, partitioned as ``--partition`` says, each hospital carving its
validation patients from its own training patients. The test fold never chooses an
epoch, a round or a hyper-parameter.

With the site partition the folds are drawn within each site (every site keeps its
patients; each site's patients are split k ways, stratified where the class counts
allow); otherwise on the pooled data, stratified. The centralized model of a fold sees
the union of the hospitals' training and validation patients and the same test fold.

Run directory::

    cv.json                the summary: mean +- std per metric per mode, and the settings
    fold-K/test_ids.txt    the fold's test patients
    fold-K/fold.json       metrics per mode, seeds, patient ids (test, and per site
                           training / validation)
    fold-K/federated/      the fold's federated run directory (as ``simulate`` writes)
    fold-K/central/        the fold's centralized model bundle and metrics
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from common.config import ModelConfig, RunConfig
from common.metrics import METRIC_KEYS
from simulations.cv_folds import FoldPlan, assign_folds

logger = logging.getLogger(__name__)

MODES = ("central", "federated", "both")
SUMMARY_FILE = "cv.json"
FOLD_FILE = "fold.json"
TEST_IDS_FILE = "test_ids.txt"
DEFAULT_MODEL_KIND = "mmt"


@dataclass(frozen=True)
class CvSettings:
    """What ``cancer-alpha cv`` runs besides the run configuration."""

    folds: int = 5
    mode: str = "both"
    baselines: bool = False

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"--mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.folds < 2:
            raise ValueError(f"--folds must be at least 2, got {self.folds}")

    @property
    def modes(self) -> tuple[str, ...]:
        return ("central", "federated") if self.mode == "both" else (self.mode,)


def with_model_kind(cfg: RunConfig, kind: str | None) -> RunConfig:
    """``cfg`` with model architecture ``kind`` (``ModelConfig.kind`` where it exists)."""
    if kind is None:
        return cfg
    if "kind" in {f.name for f in fields(ModelConfig)}:
        return replace(cfg, model=replace(cfg.model, kind=kind))
    if kind != DEFAULT_MODEL_KIND:
        raise ValueError(f"unknown model {kind!r}; available: {DEFAULT_MODEL_KIND}")
    return cfg


def plan_folds(cfg: RunConfig, settings: CvSettings) -> tuple[FoldPlan, np.ndarray]:
    """``(folds, patient ids)`` over every patient of ``cfg.data`` (all its splits)."""
    from common.dataset import load_dataset, read_manifest, site_codes
    from common.partition import PartitionSpec
    from common.paths import resolve_data_dir

    if cfg.test_data:
        raise ValueError("cross-validation draws its test folds from --data; "
                         "--test-data does not apply")
    directory = resolve_data_dir(cfg.data)
    manifest = Path(cfg.manifest) if cfg.manifest else None
    data = load_dataset(directory, manifest=manifest)
    if data.labels is None:
        raise ValueError(f"{directory}: cross-validation needs labels")
    groups = None
    if PartitionSpec.parse(cfg.partition).kind == "site":
        pattern = read_manifest(directory, manifest).site_pattern
        if not pattern:
            raise ValueError(f"{directory}: the patient ids carry no site codes, so the site "
                             "partition is not possible; use --partition iid or "
                             "dirichlet:ALPHA")
        groups = site_codes(data, pattern)
    return assign_folds(data.labels, settings.folds, cfg.seed, groups), data.patient_ids


def run_cv(
    cfg: RunConfig, settings: CvSettings, run_dir: Path, *, show_progress: bool = True,
    on_fold: Callable[[dict], None] | None = None,
) -> dict:
    """Run every fold in ``settings.modes``; write the fold records and the summary."""
    from common.atomic import write_text_atomic
    from common.bundle import write_json

    settings.validate()
    folds, ids = plan_folds(cfg, settings)
    run_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for fold in range(folds.k):
        fold_dir = run_dir / f"fold-{fold + 1}"
        fold_dir.mkdir(exist_ok=True)
        ids_file = fold_dir / TEST_IDS_FILE
        test_ids = sorted(map(str, ids[folds.test_rows(fold)]))
        write_text_atomic(ids_file, "\n".join(test_ids) + "\n")
        fold_cfg = replace(cfg, test_ids=str(ids_file.resolve()))
        record = run_fold(fold_cfg, settings, fold_dir, fold + 1, show_progress)
        record["fold_seed"] = folds.seed
        write_json(fold_dir / FOLD_FILE, record)
        records.append(record)
        if on_fold is not None:
            on_fold(record)
    summary = {
        "folds": folds.k, "modes": list(settings.modes), "grouped_by": folds.grouped_by,
        "seed": cfg.seed, "run_config": cfg.to_dict(),
        "summary": summarize(records),
    }
    write_json(run_dir / SUMMARY_FILE, summary)
    return summary


def run_fold(cfg: RunConfig, settings: CvSettings, fold_dir: Path, fold: int,
             show_progress: bool) -> dict:
    """One fold: the federated run, the centralized model and the baselines it asks for."""
    from common.bundle import write_json
    from common.simulated_federation import load_federation
    from simulations.central import run_baselines_on_split, train_central

    fed = load_federation(cfg)
    pool_ids = fed.pool.patient_ids.astype(str)
    record: dict[str, Any] = {
        "fold": fold, "seed": cfg.seed,
        "test_ids": sorted(fed.test.patient_ids.astype(str).tolist()),
        "sites": [{"site": s.name, "train_ids": sorted(pool_ids[s.train].tolist()),
                   "val_ids": sorted(pool_ids[s.val].tolist())} for s in fed.plan.sites],
        "metrics": {},
    }
    if "federated" in settings.modes:
        from simulations.runner import simulate

        run = simulate(replace(cfg, out=str(fold_dir / "federated")), compare=False,
                       show_progress=show_progress)
        record["metrics"]["federated"] = _headline(_read_json(run / "metrics.json"),
                                                   "best_round")
    if "central" in settings.modes:
        central = train_central(fed, cfg, fold_dir / "central" / "model")
        write_json(fold_dir / "central" / "metrics.json", central)
        record["metrics"]["central"] = _headline(central, "best_epoch")
    if settings.baselines:
        for name, m in run_baselines_on_split(fed, cfg.seed).items():
            record["metrics"][name] = _headline(m, "fit_seconds")
    return record


def summarize(records: list[dict]) -> dict[str, dict[str, dict[str, Any]]]:
    """Model -> metric -> ``{"mean", "std", "values"}`` over the folds (std: sample,
    ddof 1; NaN folds, e.g. an AUC over one class, are left out of mean and std)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for model in records[0]["metrics"] if records else ():
        out[model] = {}
        for key in METRIC_KEYS:
            values = [float(r["metrics"][model][key]) for r in records]
            finite = np.array([v for v in values if np.isfinite(v)])
            out[model][key] = {
                "mean": float(finite.mean()) if len(finite) else float("nan"),
                "std": float(finite.std(ddof=1)) if len(finite) > 1 else float("nan"),
                "values": values,
            }
    return out


def _headline(metrics: dict, extra: str) -> dict:
    return {**{k: float(metrics[k]) for k in METRIC_KEYS}, extra: metrics.get(extra)}


def _read_json(path: Path) -> dict:
    import json

    return json.loads(path.read_text())
