"""The coordinator's configuration, its processes' environment and the Flower CLI's
connection config."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.atomic import PRIVATE_FILE_MODE, write_text_atomic
from common.flower import flower_process_env
from common.pki import Pki
from server.coordinator.guard import operator_token, write_operator_credentials

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONNECTION = "consortium"  # the Flower CLI's name for this SuperLink
RUN_CONFIG_FILE = "run-config.toml"
RECORD_FILE = "coordinator.json"
REGISTRY_FILE = "sites.json"
DATABASE = "superlink.db"
PRIVATE_DIR_MODE = 0o700


class CoordinatorError(RuntimeError):
    """The coordinator cannot start or the run cannot be submitted; says why."""


@dataclass
class CoordinatorConfig:
    """What ``coordinator start`` was asked to do; paths made absolute."""

    pki_dir: Path
    state_dir: Path
    host: str = "0.0.0.0"
    port: int = 9092
    run_name: str = "consortium"
    # Flower run config overrides (kebab-case keys, as in pyproject's [tool.flwr.app.config])
    run_config: dict[str, Any] = field(default_factory=dict)
    app_dir: Path = PROJECT_ROOT
    resume: bool = False
    keep_alive: bool = False  # keep the SuperLink up after the run (e.g. for more runs)
    startup_timeout: float = 60.0
    # Prometheus endpoint of the run's metrics (server.monitoring); port 0: none.
    metrics_port: int = 0
    metrics_addr: str = "127.0.0.1"

    def __post_init__(self) -> None:
        # Flower's CLI runs with its own working directory: every path must be absolute.
        self.pki_dir = Path(self.pki_dir).expanduser().resolve()
        self.state_dir = Path(self.state_dir).expanduser().resolve()
        self.app_dir = Path(self.app_dir).expanduser().resolve()

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "runs" / self.run_name

    @property
    def flwr_home(self) -> Path:
        return self.state_dir / "flwr-home"

    @property
    def local_address(self) -> str:
        """Where this machine reaches its own SuperLink (the CLI and the probes)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"


@dataclass
class RunResult:
    """How a submitted run ended."""

    run_id: int
    status: str  # Flower's, e.g. "finished:completed"
    run_dir: Path
    metrics: dict | None
    seconds: float

    @property
    def ok(self) -> bool:
        return self.status == "finished:completed" and self.metrics is not None


def coordinator_env(cfg: CoordinatorConfig) -> dict[str, str]:
    """Offline Flower with its own FLWR_HOME; the venv's bin first on PATH."""
    env = flower_process_env()
    env["FLWR_HOME"] = str(cfg.flwr_home)
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    return env


def secure_state_dir(cfg: CoordinatorConfig) -> None:
    """State directory 0700 and the link-state database 0600 (created empty if new, so
    SQLite's journal files inherit the mode): they hold run state and site registrations."""
    for directory in (cfg.state_dir, cfg.flwr_home):
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(PRIVATE_DIR_MODE)
    database = cfg.state_dir / DATABASE
    database.touch(mode=PRIVATE_FILE_MODE, exist_ok=True)
    database.chmod(PRIVATE_FILE_MODE)


def write_flower_home(cfg: CoordinatorConfig) -> Path:
    """The Flower CLI's config: one TLS connection to this SuperLink, no insecure mode,
    and the operator token that run control requires (:mod:`server.coordinator.guard`)."""
    secure_state_dir(cfg)
    write_operator_credentials(cfg.flwr_home, cfg.local_address, operator_token(cfg.state_dir))
    pki = Pki(cfg.pki_dir)
    text = (f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "{cfg.local_address}"\n'
            f"root-certificates = {json.dumps(str(pki.ca_cert.resolve()))}\n")
    path = cfg.flwr_home / "config.toml"
    write_text_atomic(path, text)
    return path
