"""The run directory: model bundle, metrics, config and plots of one federated run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.bundle import save_bundle, write_json
from common.config import RunConfig
from common.metrics import METRIC_KEYS
from server.monitoring import rejections_by_site

if TYPE_CHECKING:
    from server.rounds import FederationOutcome

MODEL_DIR = "model"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoint"


def write_federated_outputs(
    run_dir: Path,
    cfg: RunConfig,
    outcome: FederationOutcome,
    *,
    test_metrics: dict | None,
    federation_record: dict | None,
    run_id: str,
) -> dict:
    """Write bundle, metrics.json, config.json and plots; return the metrics payload."""
    from common.plots import plot_confusion_matrix, plot_round_curves

    run_dir.mkdir(parents=True, exist_ok=True)
    best = next(r for r in outcome.rounds if r.get("best"))
    lineage = {
        "run_id": run_id,
        "round": outcome.best_round,
        "strategy": cfg.strategy,
        "partition": cfg.partition,
        "sites": [s["site"] for s in outcome.sites],
        "per_site_epsilon": per_site_epsilon(outcome.rounds) or None,
        "central_dp": outcome.central_dp,
        "distributed_dp": outcome.distributed_dp,
        "local_dp": outcome.local_dp,
        "data_fingerprints": (federation_record or {}).get("fingerprints", {}),
        "metrics": {"val": best.get("val", {}),
                    "test": {k: test_metrics[k] for k in METRIC_KEYS}
                    if test_metrics else {}},
    }
    save_bundle(run_dir / MODEL_DIR, model_config=cfg.model, schema=outcome.schema,
                standardizer=outcome.standardizer, state_dict=outcome.best_state,
                lineage=lineage)
    payload: dict[str, Any] = {}
    if test_metrics:
        payload.update({k: test_metrics[k] for k in METRIC_KEYS})
        payload["test"] = test_metrics
    payload.update({
        "run_id": run_id,
        "best_round": outcome.best_round,
        "rounds_run": len(outcome.rounds),
        "stopped_early": outcome.stopped or None,
        # Deployment: the last completed round each coordinator restart resumed after.
        "resumed_after_rounds": outcome.resumed_from or None,
        "per_site_epsilon": per_site_epsilon(outcome.rounds) or None,
        "central_dp": outcome.central_dp,
        "distributed_dp": outcome.distributed_dp,
        "local_dp": outcome.local_dp,
        "federated_seconds": outcome.seconds,
        "setup_seconds": outcome.setup_seconds,
        "rounds_seconds": outcome.seconds - outcome.setup_seconds,
        "sites": _per_site_summary(outcome),
        "rejections": rejections_by_site(outcome.rounds) or None,  # vetting, per site
        "rounds": outcome.rounds,
    })
    write_json(run_dir / METRICS_FILE, payload)
    write_json(run_dir / CONFIG_FILE, {
        "run_id": run_id,
        "run_config": cfg.to_dict(),
        "flower_run_config": cfg.to_flower(),
        "federation": federation_record,
        "schema_sha256": outcome.schema.content_hash(),
    })
    plot_round_curves(outcome.rounds, run_dir / "rounds.png",
                      title=f"{cfg.strategy} on {cfg.data} ({cfg.partition} partition)")
    if test_metrics:
        plot_confusion_matrix(test_metrics["confusion_matrix"], outcome.schema.label_names,
                              run_dir / "confusion_matrix.png",
                              title=f"Global model, round {outcome.best_round}, test split")
    return payload


def per_site_epsilon(rounds: list[dict]) -> dict[str, float]:
    """Each site's cumulative epsilon as last reported (local DP runs; empty otherwise)."""
    spent: dict[str, float] = {}
    for record in rounds:
        for site in record.get("sites", []):
            if "epsilon" in site:
                spent[site["site"]] = site["epsilon"]
    return spent


def _per_site_summary(outcome: FederationOutcome) -> list[dict]:
    """Each site's data counts plus its validation metrics at the best round."""
    best = next(r for r in outcome.rounds if r.get("best"))
    at_best = {s["site"]: s for s in best.get("sites", [])}
    out = []
    for site in outcome.sites:
        rec = dict(site)
        if site["site"] in at_best:
            rec["best_round"] = {k: v for k, v in at_best[site["site"]].items() if k != "site"}
        out.append(rec)
    return out


def update_metrics(run_dir: Path, **sections: Any) -> None:
    """Add sections (e.g. ``comparison``) to an existing metrics.json."""
    path = run_dir / METRICS_FILE
    payload = json.loads(path.read_text())
    payload.update(sections)
    write_json(path, payload)
