"""Centralized training and classical baselines on a federation's exact split.

The pooled model sees the union of the hospitals' training patients, selects its epoch
on the union of their validation patients, and is scored on the same global test split
as the federated model. The standardizer is the pooled one, which is also exactly what
the federation computes from summed site statistics. The class-centroid model is fit in
closed form instead, with the per-patient standardization it always uses: what its
federation estimates from noised sums, without the noise.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from common.config import CENTROID_KIND, RunConfig
from common.dataset.multiomics import MultiOmicsData
from common.metrics import METRIC_KEYS
from common.preprocessing import Standardizer
from common.simulated_federation import SimulatedFederation

logger = logging.getLogger(__name__)



def pooled_split(fed: SimulatedFederation) -> tuple[MultiOmicsData, MultiOmicsData]:
    """``(train, val)``: the union of every hospital's training and validation rows."""
    train = np.concatenate([s.train for s in fed.plan.sites])
    val = np.concatenate([s.val for s in fed.plan.sites])
    return fed.pool.subset(np.sort(train)), fed.pool.subset(np.sort(val))


def train_central(
    fed: SimulatedFederation, cfg: RunConfig, run_dir: Path | None = None
) -> dict:
    """Train the same model on pooled data for ``rounds * local_epochs`` epochs at most."""
    from common.bundle import save_bundle
    from common.metrics import classification_metrics
    from common.model import ModelSpec, build_model
    from common.training import fit, predict_proba, seed_everything

    train, val = pooled_split(fed)
    epochs = cfg.rounds * cfg.local_epochs
    tcfg = replace(cfg.train, max_epochs=epochs)
    seed_everything(cfg.seed)
    model = build_model(ModelSpec.for_schema(cfg.model, train.schema))
    started = time.perf_counter()
    if cfg.model.kind == CENTROID_KIND:
        # The same closed-form fit the federation's releases estimate, without noise.
        standardizer = Standardizer.for_each_patient(train.schema)
        result = _fit_centroids(model, standardizer.transform(train))
    else:
        standardizer = Standardizer.fit(train)
        result = fit(model, standardizer.transform(train), standardizer.transform(val), tcfg,
                     seed=cfg.seed)
    seconds = time.perf_counter() - started
    test = standardizer.transform(fed.test.align_to(train.schema, "test split"))
    metrics = classification_metrics(test.labels, predict_proba(model, test),
                                     train.schema.label_names)
    if run_dir is not None:
        save_bundle(run_dir, model_config=cfg.model, schema=train.schema,
                    standardizer=standardizer, state_dict=result.state_dict,
                    lineage={"strategy": "centralized", "epoch": result.best_epoch,
                             "metrics": {"test": {k: metrics[k] for k in METRIC_KEYS}}})
    return {
        **{k: metrics[k] for k in METRIC_KEYS},
        "test": metrics,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "max_epochs": epochs,
        "train_seconds": seconds,
        "history": result.history,
    }


def _fit_centroids(model: Any, train: MultiOmicsData) -> Any:
    """The class-centroid model fit exactly on ``train``, as a one-epoch fit result."""
    from common.centroid import fit_exact
    from common.training import FitResult, tensors

    fit_exact(model, *tensors(train))
    return FitResult(state_dict={k: v.clone() for k, v in model.state_dict().items()},
                     best_epoch=1, history=[])


def run_baselines_on_split(fed: SimulatedFederation, seed: int) -> dict:
    """Logistic regression, random forest, SVM, gradient boosting on concatenated modalities.

    Baselines tune their own hyper-parameters by cross-validation on the pooled training
    and validation patients (train + val); the test split stays unseen.
    """
    from common.baselines import run_baselines

    rows = np.concatenate([np.concatenate([s.train, s.val]) for s in fed.plan.sites])
    both = fed.pool.subset(np.sort(rows))
    standardizer = Standardizer.fit(both)
    test = standardizer.transform(fed.test.align_to(both.schema, "test split"))
    return run_baselines(standardizer.transform(both), test, seed)


def compare_on_split(fed: SimulatedFederation, cfg: RunConfig, run_dir: Path) -> dict:
    """Centralized model and baselines for a federated run's ``metrics.json``."""
    central = train_central(fed, cfg, run_dir / "central-model")
    baselines = run_baselines_on_split(fed, cfg.seed)
    return {
        "centralized": {k: v for k, v in central.items() if k != "history"},
        "baselines": {name: {k: m[k] for k in (*METRIC_KEYS, "fit_seconds") if k in m}
                      for name, m in baselines.items()},
    }
