"""Site registration: the SuperLink's registry made equal to the PKI's site keys."""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from common.atomic import write_text_atomic
from common.pki import Pki, load_site_public_key, public_key_fingerprint
from server.coordinator.flwr_cli import flwr
from server.coordinator.settings import (
    CONNECTION,
    REGISTRY_FILE,
    CoordinatorConfig,
    CoordinatorError,
)

logger = logging.getLogger(__name__)


@dataclass
class SyncReport:
    """What :func:`sync_sites` changed; ``removed`` are nodes no PKI key accounts for."""

    registered: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    unregistered: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # node ids
    refused: dict[str, str] = field(default_factory=dict)  # site -> why it is not in
    nodes: dict[str, str] = field(default_factory=dict)  # site -> node id

    def as_dict(self) -> dict[str, object]:
        return {"registered": self.registered, "kept": self.kept,
                "unregistered": self.unregistered, "removed_nodes": self.removed,
                "refused": self.refused}


# Flower's node statuses that still let a node join; "unregistered" nodes stay listed.
_ACTIVE = frozenset({"registered", "online", "offline"})


def active_nodes(env: dict[str, str]) -> set[str]:
    """Node ids the SuperLink would let join (registered and not unregistered)."""
    return {str(n["node-id"]) for n in flwr(["supernode", "ls", CONNECTION], env)
            .get("nodes", []) if n.get("status") in _ACTIVE}


def sync_sites(cfg: CoordinatorConfig, env: dict[str, str]) -> SyncReport:
    """Make the SuperLink's node set equal the PKI's non-revoked site keys: register
    missing keys, unregister revoked or rotated ones and every node no key accounts for."""
    pki = Pki(cfg.pki_dir)
    registry_path = cfg.state_dir / REGISTRY_FILE
    registry: dict[str, dict] = json.loads(registry_path.read_text()) \
        if registry_path.exists() else {}
    authorized = {site: public_key_fingerprint(load_site_public_key(path))
                  for site, path in pki.authorized_sites().items()}
    report = SyncReport()
    # What the SuperLink really knows: a wiped database or a node unregistered behind
    # the coordinator's back must not pass for registered.
    active = active_nodes(env)
    for site in [s for s, e in registry.items() if e["node_id"] not in active]:
        logger.warning("site %s (node %s) is not registered in the SuperLink; registering "
                       "it again", site, registry[site]["node_id"])
        del registry[site]
        _save_registry(registry_path, registry)
    for site, entry in sorted(registry.items()):
        if authorized.get(site) != entry["fingerprint"]:  # revoked, removed or rotated
            with contextlib.suppress(CoordinatorError):  # already gone is fine
                flwr(["supernode", "unregister", str(entry["node_id"]), CONNECTION], env)
            del registry[site]
            report.unregistered.append(site)
            _save_registry(registry_path, registry)
    ours = {e["node_id"] for e in registry.values()}
    for node in sorted(active - ours):
        logger.warning("node %s is registered in the SuperLink but no site key accounts "
                       "for it; unregistering it", node)
        flwr(["supernode", "unregister", node, CONNECTION], env)
        report.removed.append(node)
    for site, fingerprint in sorted(authorized.items()):
        if site in registry:
            report.kept.append(site)
            continue
        try:
            answer = flwr(["supernode", "register", str(pki.site_public_key(site).resolve()),
                           CONNECTION, "--name", site], env)
        except CoordinatorError as e:
            if "already in use" not in str(e):
                raise
            # Flower keeps every key it ever registered, unregistered ones included, and
            # never takes one twice: the site needs a new key.
            report.refused[site] = (
                f"the SuperLink unregistered this key earlier and never accepts a key "
                f"twice; issue a new one (`cancer-alpha pki issue-site {site} --force`, "
                "or --public-key) and sync again")
            logger.warning("site %s: %s", site, report.refused[site])
            continue
        registry[site] = {"node_id": str(answer["node-id"]), "fingerprint": fingerprint}
        report.registered.append(site)
        _save_registry(registry_path, registry)
    report.nodes = {s: e["node_id"] for s, e in registry.items()}
    return report


def registered_site_names(run_dir: Path) -> dict[int, str]:
    """Node id -> site name as registered from the PKI's keys, for a run directory of
    this coordinator (``STATE_DIR/runs/<name>``); empty for a run outside one. A site's
    name in a run's records should come from here (its authenticated key), not from
    what its replies declare."""
    path = Path(run_dir).resolve().parents[1] / REGISTRY_FILE
    try:
        registry = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {int(entry["node_id"]): site for site, entry in registry.items()}


def _save_registry(path: Path, registry: dict) -> None:
    write_text_atomic(path, json.dumps(registry, indent=2, sort_keys=True) + "\n",
                      private=True)
