"""Reject malformed or hostile model updates before they reach aggregation.

Flower's strategies check that replies carry one ArrayRecord with consistent keys;
they do not check shapes against the global model or look for NaN/inf, so one bad
site could poison the global weights. :class:`UpdateGuard` drops such replies (with a
logged reason naming the site) and aggregates the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord

from common.protocol import ARRAYS, NUM_EXAMPLES, refusal_reason, site_name

logger = logging.getLogger(__name__)


def update_problem(msg: Message, reference: ArrayRecord | None) -> str | None:
    """Why this training reply cannot be aggregated, or None when it is fine."""
    if msg.has_error():
        return f"site error: {msg.error.reason}"
    content = msg.content
    refused = refusal_reason(content)
    if refused is not None:
        return f"site declined the round: {refused}"
    if ARRAYS not in content.array_records:
        return "reply carries no model weights"
    metrics = next(iter(content.metric_records.values()), None)
    n = None if metrics is None else metrics.get(NUM_EXAMPLES)
    if not isinstance(n, int | float) or not np.isfinite(n) or n <= 0:
        return f"invalid {NUM_EXAMPLES}: {n!r}"
    arrays = content[ARRAYS]
    if reference is not None:
        if set(arrays.keys()) != set(reference.keys()):
            return "weights do not have the global model's parameter names"
        for key, ref in reference.items():
            got = arrays[key]
            if tuple(got.shape) != tuple(ref.shape) or got.dtype != ref.dtype:
                return (f"{key}: shape {tuple(got.shape)}/{got.dtype}, "
                        f"expected {tuple(ref.shape)}/{ref.dtype}")
    for key, arr in arrays.items():
        if not np.isfinite(arr.numpy()).all():
            return f"{key}: contains NaN or infinite values"
    return None


class UpdateGuard:
    """Mixin for Flower strategies: remember the weights sent, vet the updates received."""

    rejected: list[dict]

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid) -> Iterable[Message]:
        self._reference = arrays
        return super().configure_train(server_round, arrays, config, grid)  # type: ignore[misc]

    def vet(self, server_round: int, replies: Iterable[Message]) -> list[Message]:
        """The acceptable replies, in site order; the others go to ``self.rejected``."""
        accepted, self.rejected = [], []
        for msg in replies:
            problem = update_problem(msg, getattr(self, "_reference", None))
            if problem is None:
                accepted.append(msg)
                continue
            site = "?" if msg.has_error() else site_name(msg.content)
            logger.warning("round %d: update from site %s (node %s) rejected: %s",
                           server_round, site, msg.metadata.src_node_id, problem)
            self.rejected.append({"site": site, "node": msg.metadata.src_node_id,
                                  "reason": problem})
        # Replies arrive in completion order; a fixed order keeps float sums reproducible.
        accepted.sort(key=lambda m: (site_name(m.content), m.metadata.src_node_id))
        return accepted

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        accepted = self.vet(server_round, replies)
        return super().aggregate_train(server_round, accepted)  # type: ignore[misc]
