"""Sites named by their authenticated keys, not by what their replies declare.

In a deployment every SuperNode joins with a key the coordinator registered from its PKI
(:mod:`server.coordinator.registry`), so the node id a reply comes from says which site
sent it. :class:`KeyBoundGrid` wraps the run's grid and rewrites the site name of every
reply to the name bound to its node's key before anything reads it: round records,
``metrics.json``, privacy records, the model's lineage and the metrics exporter all see
that name. A reply declaring another name keeps its bound name, and the discrepancy is
logged and reported (:meth:`KeyBoundGrid.report`). Simulations have no keys: their
virtual sites keep their names.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Message

from common.protocol import SITE

logger = logging.getLogger(__name__)

UNREGISTERED = "unregistered node {node}"


class KeyBoundGrid:
    """A grid whose replies name their site by the node's registered key."""

    def __init__(self, grid: Any, names: dict[int, str],
                 reload: Callable[[], dict[int, str]] | None = None) -> None:
        self.grid, self.names = grid, dict(names)
        # Sites registered while the run goes on: their node is looked up again once.
        self.reload, self.looked_up = reload, set(names)
        self.mismatches: dict[tuple[int, str], dict[str, Any]] = {}

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self.bind(m) for m in self.grid.pull_messages(message_ids)]

    def send_and_receive(self, messages: Sequence[Message], *, timeout: float | None = None
                         ) -> Iterable[Message]:
        return [self.bind(m) for m in self.grid.send_and_receive(messages, timeout=timeout)]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)

    def bind(self, reply: Message) -> Message:
        """``reply`` with its site record naming the site its node's key belongs to."""
        if reply.has_error() or SITE not in reply.content:
            return reply
        node = reply.metadata.src_node_id
        record = reply.content[SITE]
        declared = str(record.get("name", ""))
        bound = self.name_of(node)
        if declared != bound:
            key = (node, declared)
            if key not in self.mismatches:
                logger.warning("node %s (key registered as %s) declares itself as %r; "
                               "recorded as %s", node, bound, declared, bound)
                self.mismatches[key] = {"node": str(node), "site": bound,
                                        "declared": declared}
        if declared != bound or "name" not in record:
            reply.content[SITE] = ConfigRecord({**dict(record), "name": bound})
        return reply

    def name_of(self, node: int) -> str:
        """The site bound to ``node``'s key; the registry is read again for a node not
        seen before (a site registered after the run started)."""
        if node not in self.names and node not in self.looked_up and self.reload is not None:
            self.looked_up.add(node)
            try:
                self.names.update(self.reload())
            except (OSError, KeyError, TypeError, AttributeError, ValueError) as exc:
                logger.warning("site registry unreadable (%s); node %s stays unnamed", exc, node)
        return self.names.get(node) or UNREGISTERED.format(node=node)

    def report(self) -> dict[str, Any]:
        """The ``site_identity`` section of ``metrics.json``."""
        return {"names_from": "registered site keys",
                "declared_otherwise": sorted(self.mismatches.values(),
                                             key=lambda m: (m["site"], m["declared"]))}


def key_bound(grid: Any, run_dir: Path) -> KeyBoundGrid | None:
    """``grid`` wrapped to name sites by their keys when ``run_dir`` belongs to a
    coordinator that registered site keys; None otherwise (simulation)."""
    from server.coordinator.registry import registered_site_names

    try:
        names = registered_site_names(run_dir)
    except (KeyError, TypeError, AttributeError, ValueError):
        logger.warning("%s: no readable site registry beside this run; sites keep the "
                       "names they declare", run_dir)
        return None
    return (KeyBoundGrid(grid, names, reload=lambda: registered_site_names(run_dir))
            if names else None)
