"""``coordinator start``: pre-flight, SuperLink, site sync, one run, clean stop."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import time
from collections.abc import Callable

from common.pki import Pki, PkiError, check_server_files
from common.processes import stop_process
from server.coordinator.flwr_cli import run_details
from server.coordinator.progress import RoundWatcher
from server.coordinator.records import append_record
from server.coordinator.registry import sync_sites
from server.coordinator.runs import follow_run, prepare_run_config, stop_previous_run, submit_run
from server.coordinator.settings import (
    CoordinatorConfig,
    CoordinatorError,
    RunResult,
    coordinator_env,
    write_flower_home,
)
from server.coordinator.superlink import PID_FILE, start_superlink

logger = logging.getLogger(__name__)


def run_coordinator(cfg: CoordinatorConfig,
                    echo: Callable[[str], None] | None = None,
                    progress: Callable[[str], None] | None = None) -> RunResult:
    """Everything ``coordinator start`` does; returns when the run has finished.
    ``echo`` gets the run's log lines, ``progress`` a "sites registered" line and one
    line per completed round."""
    pki = Pki(cfg.pki_dir)
    try:
        check_server_files(pki.ca_cert, pki.server_cert, pki.server_key,
                           host=None if cfg.host in ("0.0.0.0", "::", "") else cfg.host)
    except PkiError as e:
        raise CoordinatorError(str(e)) from None
    if not pki.authorized_sites():
        # Sites can still be registered by hand (`flwr supernode register`); say how.
        logger.warning("no site keys in %s: no site can join until keys are issued "
                       "(`cancer-alpha pki issue-site`) and synced "
                       "(`cancer-alpha coordinator sync-sites`)", cfg.pki_dir / "sites")
    if not (cfg.app_dir / "pyproject.toml").is_file():
        raise CoordinatorError(f"{cfg.app_dir} is not a Flower app (no pyproject.toml); "
                               "pass the project's source directory with --app (or "
                               "CANCER_ALPHA_APP)")
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    run_config, flat = prepare_run_config(cfg)
    env = coordinator_env(cfg)
    metrics_server = None
    if cfg.metrics_port:
        from server.monitoring import MULTIPROC_ENV, serve_coordinator_metrics

        # Each run's ServerApp is its own short-lived process: they write the metrics
        # to files in this directory, which this process serves summed.
        directory = cfg.state_dir / "metrics"
        env[MULTIPROC_ENV] = str(directory)
        metrics_server, _ = serve_coordinator_metrics(cfg.metrics_port, cfg.metrics_addr,
                                                      directory)
        logger.info("metrics at http://%s:%d/metrics", cfg.metrics_addr, cfg.metrics_port)
    write_flower_home(cfg)
    superlink = start_superlink(cfg, env)
    stop_requested = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM,)}
    try:
        report = sync_sites(cfg, env)
        logger.info("sites: %s", report.as_dict())
        if progress is not None:
            progress(f"sites registered: {len(report.nodes)}"
                     + (f" ({', '.join(sorted(report.nodes))})" if report.nodes else ""))
        if cfg.resume:
            stop_previous_run(cfg, env)
        started = time.perf_counter()
        run_id = submit_run(cfg, env, run_config)
        append_record(cfg, run_id=run_id, resume=cfg.resume,
                       rounds=flat.get("rounds"), sites=report.nodes)
        logger.info("run %s submitted (%s)", run_id, cfg.run_dir)
        watcher = None if progress is None else RoundWatcher(
            cfg.run_dir, progress, _rounds_total(flat)).start()
        try:
            status = follow_run(run_id, env, cfg.run_dir / "coordinator.log", echo)
        finally:
            if watcher is not None:
                watcher.stop()
        details = run_details(run_id, env)
        metrics_path = cfg.run_dir / "metrics.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else None
        append_record(cfg, finished=run_id, status=status,
                       traffic=details.get("network-traffic"),
                       compute=details.get("compute-time"))
        result = RunResult(run_id, status, cfg.run_dir, metrics,
                           time.perf_counter() - started)
        if cfg.keep_alive and not stop_requested:
            logger.info("run finished (%s); SuperLink stays up (Ctrl-C to stop)", status)
            with contextlib.suppress(KeyboardInterrupt):
                superlink.wait()
        return result
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        stop_process(superlink)
        if metrics_server is not None:
            metrics_server.shutdown()
        (cfg.state_dir / PID_FILE).unlink(missing_ok=True)


def _rounds_total(flat: dict) -> int | None:
    """The run's number of rounds (its config's, else the default)."""
    from common.config import RunConfig

    try:
        return RunConfig.from_flower(flat).rounds
    except (ValueError, TypeError):
        return None
