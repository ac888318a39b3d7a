"""Runs on the service's SuperLink: submit one from a template, stop it, resume it, and
follow each in a thread until Flower says it ended; the sites' presence, polled."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from server.console_api.state import ConsoleError
from server.console_api.store import ConsoleStore, RunRow, utc_now
from server.console_api.templates import Template
from server.coordinator import (
    CONNECTION,
    REGISTRY_FILE,
    CoordinatorConfig,
    CoordinatorError,
    flwr,
    follow_run,
    prepare_run_config,
    stop_previous_run,
    submit_run,
    sync_sites,
)
from server.coordinator.flwr_cli import run_details
from server.coordinator.records import append_record

logger = logging.getLogger(__name__)

RunEnded = Callable[[str, int, str], None]  # run id, Flower run id, its final status


class SuperLinkControl:
    """:class:`~server.console_api.state.RunControl` over the coordinator's SuperLink."""

    def __init__(self, base: CoordinatorConfig, env: dict[str, str],
                 on_end: RunEnded) -> None:
        self.base, self.env, self.on_end = base, env, on_end
        self._threads: dict[str, threading.Thread] = {}

    def _cfg(self, run_id: str, **changes: object) -> CoordinatorConfig:
        return replace(self.base, run_name=run_id, **changes)

    def start(self, run_id: str, template: Template) -> list[int]:
        cfg = self._cfg(run_id, run_config=dict(template.config), resume=False)
        return [self._submit(cfg)]

    def resume(self, run: RunRow) -> list[int]:
        cfg = self._cfg(run.id, run_config={}, resume=True)
        with contextlib.suppress(CoordinatorError):
            stop_previous_run(cfg, self.env)
        return [*run.flower_runs, self._submit(cfg)]

    def stop(self, run: RunRow) -> None:
        for flower_run in run.flower_runs[-1:]:
            status = str(run_details(flower_run, self.env).get("status", "unknown"))
            if not status.startswith("finished"):
                flwr(["stop", str(flower_run), CONNECTION], self.env)

    def _submit(self, cfg: CoordinatorConfig) -> int:
        try:
            run_config, flat = prepare_run_config(cfg)
        except CoordinatorError as e:
            raise ConsoleError(409 if "already" in str(e) or "nothing to resume" in str(e)
                               else 422, str(e)) from None
        try:
            flower_run = submit_run(cfg, self.env, run_config)
        except CoordinatorError as e:
            raise ConsoleError(502, str(e)) from None
        append_record(cfg, run_id=flower_run, resume=cfg.resume, rounds=flat.get("rounds"),
                      sites=_registered(cfg))
        thread = threading.Thread(target=self._follow, args=(cfg, flower_run),
                                  name=f"follow-{cfg.run_name}", daemon=True)
        self._threads[cfg.run_name] = thread
        thread.start()
        return flower_run

    def _follow(self, cfg: CoordinatorConfig, flower_run: int) -> None:
        status = "unknown"
        try:
            status = follow_run(flower_run, self.env, cfg.run_dir / "coordinator.log")
            details = run_details(flower_run, self.env)
            append_record(cfg, finished=flower_run, status=status,
                          traffic=details.get("network-traffic"),
                          compute=details.get("compute-time"))
        except Exception:  # the run's end must reach the store whatever failed here
            logger.exception("following run %s (Flower run %s) failed", cfg.run_name,
                             flower_run)
        finally:
            self.on_end(cfg.run_name, flower_run, status)

    def sync_sites(self) -> dict[str, str]:
        try:
            return sync_sites(self.base, self.env).refused
        except CoordinatorError as e:
            raise ConsoleError(502, str(e)) from None

    def online(self) -> dict[str, str | None]:
        """Online site -> when it came online, from the SuperLink's node list."""
        by_node = {entry["node_id"]: site for site, entry in _registry(self.base).items()}
        return {by_node[node]: since for node, since in _online_nodes(self.env).items()
                if node in by_node}


def _online_nodes(env: dict[str, str]) -> dict[str, str | None]:
    """Node id -> online since. In this process through the Flower CLI's own client (a
    ``flwr`` process every few seconds would cost a core's worth of start-ups); with the
    ``flwr`` command when that client does not answer (e.g. another Flower version)."""
    try:
        return _online_nodes_in_process(env)
    except Exception as e:  # any failure of Flower's internals: the CLI still works
        logger.debug("listing nodes in process failed (%s); using the flwr command", e)
    nodes = flwr(["supernode", "ls", CONNECTION], env).get("nodes", [])
    return {str(n["node-id"]): n.get("online-at") for n in nodes if n.get("status") == "online"}


def _online_nodes_in_process(env: dict[str, str]) -> dict[str, str | None]:
    from flwr.cli.flower_config import read_superlink_connection
    from flwr.cli.utils import init_http_client_from_connection
    from flwr.proto.control_pb2 import ListNodesRequest
    from flwr.supercore.credential_store import file_credential_store

    # This service's Flower home: its connection config and the operator token (the
    # credential file's path is fixed when Flower is imported).
    home = Path(env["FLWR_HOME"])
    os.environ["FLWR_HOME"] = str(home)
    file_credential_store.CREDENTIAL_FILE_PATH = home / "credentials.yaml"
    client = init_http_client_from_connection(read_superlink_connection(CONNECTION))
    try:
        reply = client.ListNodes(ListNodesRequest())
    finally:
        client.close()
    return {str(n.node_id): n.last_activated_at or None for n in reply.nodes_info
            if n.status == "online"}


def _registry(cfg: CoordinatorConfig) -> dict[str, dict]:
    with contextlib.suppress(OSError, ValueError):
        return json.loads((cfg.state_dir / REGISTRY_FILE).read_text())
    return {}


def _registered(cfg: CoordinatorConfig) -> dict[str, str]:
    return {site: entry["node_id"] for site, entry in _registry(cfg).items()}


class SitePoller:
    """Every ``interval`` seconds: which sites are online (their last seen time moves)."""

    def __init__(self, online: Callable[[], dict[str, str | None]], store: ConsoleStore,
                 interval: float = 5.0) -> None:
        self.online, self.store, self.interval = online, store, interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="site-poller", daemon=True)

    def start(self) -> SitePoller:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=10)

    def poll(self) -> None:
        try:
            online = self.online()
        except Exception as e:  # a failed poll must not end the polling
            logger.warning("cannot list the SuperLink's nodes: %s", e)
            return
        now = utc_now()
        for row in self.store.sites():
            if row.name in online:
                self.store.update_site(row.name, online=True, last_seen=now)
            elif row.online:
                self.store.update_site(row.name, online=False)

    def _loop(self) -> None:
        while True:
            self.poll()
            if self._stopped.wait(self.interval):
                return
