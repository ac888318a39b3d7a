"""``coordinator serve``: the SuperLink (as ``coordinator start`` runs it) plus the
console API, until stopped.

State directory: the coordinator's (``superlink.db``, ``sites.json``, ``runs/``, ...)
plus ``console/console.db`` (sites and runs), ``console/registry.db`` (the model
registry and the hash-chained audit log, with its anchor ``console/audit.anchor``),
``console/jwt.secret`` and ``templates/``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from common.pki import Pki, PkiError, check_server_files
from common.processes import stop_process
from server.console_api.security import console_tokens
from server.console_api.state import ConsoleState
from server.console_api.store import ConsoleStore, utc_now
from server.console_api.supervisor import SitePoller, SuperLinkControl
from server.console_api.templates import Templates
from server.coordinator import (
    CoordinatorConfig,
    CoordinatorError,
    coordinator_env,
    start_superlink,
    write_flower_home,
)
from server.coordinator.superlink import PID_FILE
from server.serving.audit_log import AuditLog
from server.serving.database import open_database
from server.serving.registry import Registry

logger = logging.getLogger(__name__)

AUDIT_KEY_ENV = "CANCER_ALPHA_AUDIT_KEY"


@dataclass
class ServeConfig:
    """Where the API listens (the SuperLink's settings are in ``coordinator``)."""

    coordinator: CoordinatorConfig
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    ssl_certfile: str = ""
    ssl_keyfile: str = ""
    site_poll_seconds: float = 5.0


def console_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "console"


def open_state(state_dir: Path, pki_dir: Path) -> ConsoleState:
    """The service state over ``state_dir`` without a SuperLink (read-only until a
    ``control`` is set)."""
    state_dir = Path(state_dir).resolve()
    directory = console_dir(state_dir)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    _, sessions = open_database(f"sqlite:///{directory / 'registry.db'}")
    key = os.environ.get(AUDIT_KEY_ENV, "")
    if not key:
        logger.warning("no audit key (%s): anyone who can write %s can rewrite the audit "
                       "chain undetected", AUDIT_KEY_ENV, directory / "registry.db")
    audit = AuditLog(sessions, key, directory / "audit.anchor")
    audit.check_writable()
    templates = Templates(state_dir / "templates")
    templates.ensure_default()
    state = ConsoleState(state_dir=state_dir, pki=Pki(Path(pki_dir).resolve()),
                         store=ConsoleStore(directory / "console.db"), templates=templates,
                         registry=Registry(sessions, audit), audit=audit,
                         tokens=console_tokens(directory))
    state.refresh_sites()
    return state


def serve(cfg: ServeConfig) -> None:
    """Start the SuperLink, register the sites' keys, serve the API until SIGTERM/Ctrl-C."""
    import uvicorn

    from server.console_api.app import create_app

    coordinator = cfg.coordinator
    pki = Pki(coordinator.pki_dir)
    try:
        check_server_files(pki.ca_cert, pki.server_cert, pki.server_key,
                           host=None if coordinator.host in ("0.0.0.0", "::", "") else
                           coordinator.host)
    except PkiError as e:
        raise CoordinatorError(str(e)) from None
    if not (coordinator.app_dir / "pyproject.toml").is_file():
        raise CoordinatorError(f"{coordinator.app_dir} is not a Flower app (no pyproject.toml)")
    state = open_state(coordinator.state_dir, coordinator.pki_dir)
    _interrupted_runs(state)
    env = coordinator_env(coordinator)
    write_flower_home(coordinator)
    superlink = start_superlink(coordinator, env)
    poller = None
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        control = SuperLinkControl(coordinator, env, state.run_ended)
        state.control = control
        refused = control.sync_sites()
        for site, why in refused.items():
            logger.warning("site %s: %s", site, why)
            state.store.update_site(site, registration_problem=why)
        poller = SitePoller(control.online, state.store, cfg.site_poll_seconds).start()
        uvicorn.run(create_app(state), host=cfg.api_host, port=cfg.api_port,
                    ssl_certfile=cfg.ssl_certfile or None, ssl_keyfile=cfg.ssl_keyfile or None,
                    log_level="warning")
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        if poller is not None:
            poller.stop()
        stop_process(superlink)
        (coordinator.state_dir / PID_FILE).unlink(missing_ok=True)
        _interrupted_runs(state)
        state.store.close()


def _raise_interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _interrupted_runs(state: ConsoleState) -> None:
    """Runs the store calls running when the service (re)starts or stops: their Flower
    run went with the SuperLink; each continues from its checkpoint with resume."""
    for row in state.store.runs("running"):
        with contextlib.suppress(ValueError):
            state.store.update_run(row.id, status="stopped", finished_at=utc_now(),
                                   errors=[*row.errors, "the coordinator service stopped "
                                           "during the run; resume it to continue after its "
                                           "last completed round"])
