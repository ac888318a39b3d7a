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
    registered: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    unregistered: list[str] = field(default_factory=list)
    nodes: dict[str, str] = field(default_factory=dict)  # site -> node id


def sync_sites(cfg: CoordinatorConfig, env: dict[str, str]) -> SyncReport:
    """Make the SuperLink's registry equal the PKI's non-revoked site keys."""
    pki = Pki(cfg.pki_dir)
    registry_path = cfg.state_dir / REGISTRY_FILE
    registry: dict[str, dict] = json.loads(registry_path.read_text()) \
        if registry_path.exists() else {}
    authorized = {site: public_key_fingerprint(load_site_public_key(path))
                  for site, path in pki.authorized_sites().items()}
    report = SyncReport()
    # What the SuperLink really knows: a wiped database must not pass for registered.
    known = {str(n["node-id"]) for n in flwr(["supernode", "ls", CONNECTION], env)
             .get("nodes", []) if n.get("status") != "deleted"}
    for site in [s for s, e in registry.items() if e["node_id"] not in known]:
        logger.warning("site %s (node %s) is not in the SuperLink's database; registering "
                       "it again", site, registry[site]["node_id"])
        del registry[site]
    for site, entry in sorted(registry.items()):
        if authorized.get(site) != entry["fingerprint"]:  # revoked, removed or rotated
            with contextlib.suppress(CoordinatorError):  # already gone is fine
                flwr(["supernode", "unregister", str(entry["node_id"]), CONNECTION], env)
            del registry[site]
            report.unregistered.append(site)
            _save_registry(registry_path, registry)
    for site, fingerprint in sorted(authorized.items()):
        if site in registry:
            report.kept.append(site)
            continue
        answer = flwr(["supernode", "register", str(pki.site_public_key(site).resolve()),
                       CONNECTION, "--name", site], env)
        registry[site] = {"node_id": str(answer["node-id"]), "fingerprint": fingerprint}
        report.registered.append(site)
        _save_registry(registry_path, registry)
    report.nodes = {s: e["node_id"] for s, e in registry.items()}
    return report


def _save_registry(path: Path, registry: dict) -> None:
    write_text_atomic(path, json.dumps(registry, indent=2, sort_keys=True) + "\n")
