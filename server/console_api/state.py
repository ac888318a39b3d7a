"""Everything one coordinator service holds (``app.state.console``), and bringing the
store up to date with the PKI, the run directories and the model registry."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from common.pki import Pki, PkiError, load_site_public_key, public_key_fingerprint
from server.console_api import rundir
from server.console_api.store import ConsoleStore, RunRow
from server.console_api.templates import NAME, Template, Templates
from server.serving.audit_log import AuditLog
from server.serving.auth import TokenService
from server.serving.registry import Actor, Registry, RegistryError

logger = logging.getLogger(__name__)

SERVICE_ACTOR = Actor("coordinator", "admin")  # what the service does on its own


class ConsoleError(Exception):
    """An action that cannot be done; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class RunControl(Protocol):
    """Starts, stops and resumes runs on the SuperLink and applies site key changes."""

    def start(self, run_id: str, template: Template) -> list[int]: ...

    def stop(self, run: RunRow) -> None: ...

    def resume(self, run: RunRow) -> list[int]: ...

    def sync_sites(self) -> dict[str, str]: ...  # site -> why its key was refused

    def online(self) -> dict[str, str | None]: ...  # online site -> when it came online


@dataclass
class ConsoleState:
    state_dir: Path
    pki: Pki
    store: ConsoleStore
    templates: Templates
    registry: Registry
    audit: AuditLog
    tokens: TokenService
    control: RunControl | None = None  # None: read-only (no SuperLink)
    model_name: str = "cancer-alpha"
    poll_interval: float = 1.0  # seconds between reads of a run directory for its events
    lock: threading.RLock = field(default_factory=threading.RLock)

    @property
    def runs_dir(self) -> Path:
        return self.state_dir / "runs"

    def run_dir(self, run_id: str) -> Path:
        if not NAME.match(run_id):
            raise ConsoleError(404, f"no run {run_id!r}")
        return self.runs_dir / run_id

    # --- sites ---------------------------------------------------------------------------
    def refresh_sites(self) -> None:
        """Site rows = the PKI's keys (fingerprint, revoked)."""
        revoked = self.pki.revoked()
        keys = {}
        for site in self.pki.sites():
            try:
                fingerprint = public_key_fingerprint(
                    load_site_public_key(self.pki.site_public_key(site)))
            except PkiError as e:  # an unreadable key is listed, not fatal
                fingerprint = f"unreadable: {e}"
            keys[site] = (fingerprint, site in revoked)
        self.store.set_keys(keys)

    # --- runs ----------------------------------------------------------------------------
    def refresh_runs(self) -> None:
        """Add the run directories the store does not know (e.g. ``coordinator start``
        runs), and register the model of every finished run not yet in the registry."""
        with self.lock:
            if self.runs_dir.is_dir():
                for path in sorted(self.runs_dir.iterdir()):
                    if path.is_dir() and NAME.match(path.name) and \
                            self.store.run(path.name) is None:
                        status, finished = rundir.ended(path)
                        self.store.add_run(RunRow(path.name, None, status, rundir.started(path),
                                                  finished,
                                                  rundir.record(path).get("flower_runs", [])))
            for row in reversed(self.store.runs("finished")):  # the newest summary last
                self.on_finished(row.id)

    def run_ended(self, run_id: str, flower_run: int, flower_status: str) -> None:
        """Flower says a run ended: finished (with its outputs), stopped or failed."""
        from server.console_api.store import utc_now

        with self.lock:
            row = self.store.run(run_id)
            if row is None or row.status != "running" or row.flower_runs[-1:] != [flower_run]:
                return  # stopped through the API, or an earlier submission of a resumed run
            # metrics.json is the ServerApp's last write: the outputs are complete even
            # when Flower has not yet marked the run finished.
            if rundir.metrics(self.run_dir(run_id)) is not None and \
                    flower_status not in ("finished:stopped", "finished:failed"):
                self.store.update_run(run_id, status="finished", finished_at=utc_now())
                self.on_finished(run_id)
            elif flower_status == "finished:stopped":
                self.store.update_run(run_id, status="stopped", finished_at=utc_now())
            else:
                self.store.update_run(run_id, status="failed", finished_at=utc_now(),
                                      errors=[*row.errors, f"the run ended {flower_status} "
                                              "without its outputs (see coordinator.log)"])

    def on_finished(self, run_id: str) -> None:
        """A finished run: its sites' declared data, its model in the registry."""
        run_dir = self.run_dir(run_id)
        for site, summary in rundir.data_summaries(run_dir).items():
            self.store.update_site(site, data_summary=summary)
        bundle = run_dir / "model"
        if not (bundle / "bundle.json").is_file():
            return
        if any(Path(m.bundle_path) == bundle.resolve() for m in self.registry.models()):
            return
        try:
            rec = self.registry.add(bundle, name=self.model_name, actor=SERVICE_ACTOR)
            logger.info("registered the model of run %s as %s", run_id, rec.ref)
        except RegistryError as e:
            logger.warning("run %s: its model cannot be registered: %s", run_id, e)

    def model_run(self, bundle_path: str) -> str | None:
        """The run whose directory holds the bundle, if it is one of this service's."""
        path = Path(bundle_path)
        return path.parent.name if path.parent.parent == self.runs_dir.resolve() else None
