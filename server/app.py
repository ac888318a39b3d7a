"""The coordinator's Flower ServerApp: a thin wrapper over :mod:`server.rounds`."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from common.config import RunConfig

logger = logging.getLogger(__name__)


def default_run_dir(cfg: RunConfig, run_id: str) -> Path:
    return Path(cfg.out) if cfg.out else Path("runs") / f"{cfg.strategy}-{run_id}"


def refuse_earlier_run(run_dir: Path) -> None:
    """Raise FederationError when ``run_dir`` holds an earlier run's results, checkpoint
    or quarantine record: a new run would write over the first and start with its
    quarantined sites (resuming is ``RunConfig.resume``)."""
    from server.outputs import CHECKPOINT_DIR
    from server.rounds import FederationError
    from strategies.quarantine import QUARANTINE_FILE

    held = [name for name in ("metrics.json", CHECKPOINT_DIR, QUARANTINE_FILE)
            if (run_dir / name).exists()]
    if held:
        raise FederationError(f"run directory {run_dir} already holds a run "
                              f"({', '.join(held)}); write the new run to another "
                              "directory, or resume that one")


def run_server(
    grid: Grid, cfg: RunConfig, run_id: str, on_round: Callable[[dict], None] | None = None
) -> dict:
    """Federate, then write the run directory. Simulation runs also evaluate on test.

    With ``cfg.resume`` the run continues from ``run_dir/checkpoint`` (the last completed
    round); when no round had completed yet it starts over, saying so.
    """
    from common.metrics import classification_metrics
    from server.monitoring import CoordinatorMetrics
    from server.outputs import CHECKPOINT_DIR, write_federated_outputs
    from server.rounds import load_checkpoint, run_federation, save_checkpoint
    from strategies import check_combination

    check_combination(cfg)
    run_dir = default_run_dir(cfg, run_id)
    resume = None
    if cfg.resume:
        resume = load_checkpoint(run_dir / CHECKPOINT_DIR)
        if resume is None:
            logger.warning("resume: no completed round in %s; starting from round 1",
                           run_dir / CHECKPOINT_DIR)
    else:
        refuse_earlier_run(run_dir)
    from server.rounds.identity import key_bound
    from server.rounds.spend_book import spend_book_for

    bound = key_bound(grid, run_dir)  # deployment: sites named by their registered keys
    grid = bound or grid
    test, record = None, None
    if cfg.data:  # simulation: the coordinator may hold the global test split
        from common.simulated_federation import load_federation

        fed = load_federation(cfg)
        test, record = fed.test, fed.record()
    metrics = CoordinatorMetrics()
    metrics.run_started(run_id, cfg.strategy, cfg.dp, cfg.rounds,
                        epsilon_budget=None if cfg.dp == "none" else cfg.epsilon)

    def report(round_record: dict) -> None:
        metrics.round_completed(round_record)
        if on_round is not None:
            on_round(round_record)

    try:
        outcome = run_federation(
            grid, cfg, test=test,
            checkpoint=lambda ckpt: save_checkpoint(run_dir / CHECKPOINT_DIR, ckpt),
            on_round=report, resume=resume, spend_book=spend_book_for(run_dir),
        )
    except Exception:
        metrics.run_finished(ok=False)
        raise
    metrics.run_finished(ok=True)
    test_metrics = None
    if test is not None:
        from common.model import ModelSpec, build_model
        from common.training import predict_proba

        model = build_model(ModelSpec.for_schema(cfg.model, outcome.schema))
        model.load_state_dict(outcome.best_state)
        prepared = outcome.standardizer.transform(test.align_to(outcome.schema, "test split"))
        test_metrics = classification_metrics(prepared.labels, predict_proba(model, prepared),
                                              outcome.schema.label_names)
    payload = write_federated_outputs(run_dir, cfg, outcome, test_metrics=test_metrics,
                                      federation_record=record, run_id=run_id)
    if bound is not None:
        from server.outputs import update_metrics

        payload["site_identity"] = bound.report()
        update_metrics(run_dir, site_identity=payload["site_identity"])
    return payload


def build_server_app(
    overrides: dict[str, Any] | None = None,
    *,
    run_id: str = "",
    on_round: Callable[[dict], None] | None = None,
) -> ServerApp:
    """A ServerApp reading Flower's run config updated with ``overrides`` (see client.app)."""
    extra = dict(overrides or {})
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        cfg = RunConfig.from_flower({**dict(context.run_config), **extra})
        run_server(grid, cfg, run_id or str(context.run_id or uuid.uuid4().hex[:8]),
                   on_round=on_round)

    return app


app = build_server_app()
