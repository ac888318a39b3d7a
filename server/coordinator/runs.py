"""One federated run: its Flower run config (new or resumed), submission with ``flwr
run``, and following its log until it finishes."""

from __future__ import annotations

import contextlib
import logging
import re
import subprocess
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.atomic import write_text_atomic
from common.config import RunConfig
from common.flower import flower_executable
from server.coordinator.app_stage import staged_app
from server.coordinator.flwr_cli import flwr, run_status
from server.coordinator.records import read_record
from server.coordinator.settings import (
    CONNECTION,
    RUN_CONFIG_FILE,
    CoordinatorConfig,
    CoordinatorError,
)

logger = logging.getLogger(__name__)


def prepare_run_config(cfg: CoordinatorConfig) -> tuple[Path, dict[str, Any]]:
    """Write (or, on resume, reuse) the run's Flower run config; validate it up front."""
    run_dir = cfg.run_dir
    path = run_dir / RUN_CONFIG_FILE
    checkpoint = run_dir / "checkpoint" / "checkpoint.pt"
    if cfg.resume:
        if not path.exists():
            raise CoordinatorError(f"nothing to resume: no run {cfg.run_name!r} in "
                                   f"{cfg.state_dir / 'runs'} (start it without --resume)")
        if (run_dir / "metrics.json").exists():
            raise CoordinatorError(f"run {cfg.run_name!r} already finished "
                                   f"({run_dir / 'metrics.json'}); nothing to resume")
        flat = tomllib.loads(path.read_text())
        flat["resume"] = True
        if cfg.run_config:
            logger.warning("--resume continues run %r with its stored config; ignoring %s",
                           cfg.run_name, ", ".join(sorted(cfg.run_config)))
    else:
        if checkpoint.exists() or (run_dir / "metrics.json").exists():
            raise CoordinatorError(
                f"run {cfg.run_name!r} already exists in {run_dir}; continue it with --resume "
                "or choose another --run-name")
        # The coordinator holds no patient data: no global test split (data = "").
        flat = {"data": "", **cfg.run_config, "out": str(run_dir.resolve())}
    try:
        from strategies import check_combination

        check_combination(RunConfig.from_flower(flat))
    except (ValueError, TypeError) as e:
        raise CoordinatorError(str(e)) from None
    run_dir.mkdir(parents=True, exist_ok=True)
    if not cfg.resume:
        write_text_atomic(path, _flat_toml({k: v for k, v in flat.items() if k != "resume"}))
    submitted = run_dir / "submitted-run-config.toml"
    write_text_atomic(submitted, _flat_toml(flat))
    return submitted, flat


def _flat_toml(flat: dict[str, Any]) -> str:
    from common.site_config import flat_toml

    return flat_toml(flat, quote_keys=True)


def stop_previous_run(cfg: CoordinatorConfig, env: dict[str, str]) -> None:
    """On resume: stop the killed coordinator's Flower run if the link state kept it."""
    record = read_record(cfg)
    for run_id in record.get("flower_runs", []):
        with contextlib.suppress(CoordinatorError):
            status = run_status(run_id, env)
            if not status.startswith("finished"):
                flwr(["stop", str(run_id), CONNECTION], env)
                logger.info("stopped the interrupted Flower run %s (%s)", run_id, status)


def submit_run(cfg: CoordinatorConfig, env: dict[str, str], run_config: Path) -> int:
    """``flwr run`` of the app (a staged minimal copy) with the run config file; the
    Flower run id."""
    started = time.monotonic()
    with staged_app(cfg.app_dir) as app:
        answer = flwr(["run", str(app), CONNECTION, "--run-config", str(run_config)], env,
                      timeout=300)
    logger.info("submitted the app in %.1f s", time.monotonic() - started)
    return int(answer["run-id"])


def follow_run(run_id: int, env: dict[str, str], log_path: Path,
               echo: Callable[[str], None] | None = None) -> str:
    """Stream the run's log into ``log_path`` (and ``echo``) until it finishes."""
    cmd = [flower_executable("flwr"), "log", str(run_id), CONNECTION, "--stream"]
    with open(log_path, "a", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, cwd=env.get("FLWR_HOME"))
        assert proc.stdout is not None
        for line in proc.stdout:
            clean = _ANSI.sub("", line)
            log.write(clean)
            log.flush()
            if echo is not None:
                echo(clean.rstrip("\n"))
        proc.wait()
    deadline = time.monotonic() + 60
    status = run_status(run_id, env)
    while not status.startswith("finished") and time.monotonic() < deadline:
        time.sleep(1)
        status = run_status(run_id, env)
    return status


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
