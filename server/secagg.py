"""Secure aggregation of the training round with Flower's SecAgg+ protocol.

With SecAgg+ the coordinator learns only the weighted sum of the sites' updates: each
site masks its (quantized) update with pairwise masks agreed with its neighbours and a
private mask, and the masks cancel only in the sum. Sites that drop out after the key
exchange are recovered from Shamir shares held by their neighbours, as long as at least
``threshold`` of them are still there.

Flower implements SecAgg+ only for its legacy workflow API. This module drives
:class:`flwr.server.workflow.SecAggPlusWorkflow` one round at a time from the project's
own round executor (:mod:`server.rounds.executor`), through a minimal legacy strategy
that hands the protocol the round's sampled sites and config and collects the unmasked
sum. The executor gives that aggregate to the run's strategy as one reply
(:meth:`SecureRound.as_reply`), so its update guard and post-aggregation step apply as in
a plain round. Sites send their *update* (new weights minus the
global weights they received), not their weights: updates are small, so the fixed-point
quantization loses less. What still travels in clear are the per-site aggregates the
plain protocol sends as well: validation counts, training loss, spent epsilon, refusals.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common import FitIns, Parameters, parameters_to_ndarrays
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid

from common.protocol import (
    ARRAYS,
    METRICS,
    NUM_EXAMPLES,
    SITE,
    TRAIN_LOSS,
    refusal_reason,
    site_name,
    site_record,
    to_array,
)

logger = logging.getLogger(__name__)

# Fixed-point range of each masked value: updates beyond it are clipped by the protocol.
CLIPPING_RANGE = 8.0
# The site name of the aggregate's reply (in the strategy's rejections, if any).
SECURE_AGGREGATE = "secure aggregate"


@dataclass(frozen=True)
class SecAggSettings:
    """``threshold``: fraction of a site's neighbours needed to unmask it (privacy versus
    dropout tolerance; every site is every other site's neighbour here)."""

    threshold: float = 0.5
    clipping_range: float = CLIPPING_RANGE
    timeout: float | None = None
    # Fixed-point levels over [-clipping_range, clipping_range] (Flower's default 2**22);
    # twice an integer clipping range carries integer vectors exactly.
    quantization_range: int = 2 ** 22


@dataclass
class SecureRound:
    """What one secure round yields to the round executor."""

    replies: list[Message]  # the sites' training replies: metrics only, arrays stripped
    aggregate: ArrayRecord | None  # global weights plus the mean update; None: no sum
    rejected: list[dict]  # refusals and failures: {"site", "reason"}
    accepted: int  # sites whose update is in the sum
    num_examples: int  # their training patients
    train_loss: float | None  # their patient-weighted training loss
    # The unmasked mean of the sites' vectors, as the protocol yields it (distributed DP
    # sends vectors that are not weight updates: see server.rounds.distributed).
    mean_update: list[np.ndarray] | None = None

    def as_reply(self, request: Message) -> Message:
        """The aggregate as one training reply of the whole consortium, so that the
        strategy (its update guard and post-aggregation step) treats it like any reply."""
        assert self.aggregate is not None
        metrics = {NUM_EXAMPLES: self.num_examples}
        if self.train_loss is not None:
            metrics[TRAIN_LOSS] = self.train_loss
        return Message(content=RecordDict({ARRAYS: self.aggregate,
                                           METRICS: MetricRecord(metrics),
                                           SITE: site_record(SECURE_AGGREGATE)}),
                       reply_to=request)


@dataclass
class _NodeProxy:
    """The legacy workflow only reads ``node_id`` from its client proxies."""

    node_id: int


class _SumOnlyStrategy:
    """The two legacy-strategy calls SecAggPlusWorkflow makes, for one round."""

    def __init__(self, nodes: Sequence[int], config: ConfigRecord) -> None:
        self.nodes, self.config = list(nodes), config
        self.mean_update: list[np.ndarray] | None = None

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: Any
                      ) -> list[tuple[_NodeProxy, FitIns]]:
        return [(_NodeProxy(n), FitIns(parameters, dict(self.config))) for n in self.nodes]

    def aggregate_fit(self, server_round: int, results: list, failures: list
                      ) -> tuple[Parameters | None, dict]:
        # After unmasking, every result carries the same aggregate: the weighted mean.
        if results:
            self.mean_update = parameters_to_ndarrays(results[0][1].parameters)
        return (results[0][1].parameters if results else None), {}


class _ReplyCapture:
    """A grid that remembers the replies carrying the sites' training metrics."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.train_replies: list[Message] = []

    def send_and_receive(self, messages: Sequence[Message], *, timeout: float | None = None
                         ) -> list[Message]:
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        with_metrics = [r for r in replies if not r.has_error() and METRICS in r.content]
        if with_metrics:
            self.train_replies = replies
        return replies

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)


def secure_train_round(
    grid: Grid,
    server_round: int,
    arrays: ArrayRecord,
    nodes: Sequence[int],
    config: ConfigRecord,
    *,
    max_weight: int,
    settings: SecAggSettings,
) -> SecureRound:
    """One training round over ``nodes``, aggregated with SecAgg+: the mean update only."""
    nodes = sorted(nodes)
    if len(nodes) < 3:
        # Two parties could each subtract their own update from the sum.
        raise ValueError(f"secure aggregation needs at least 3 sites, {len(nodes)} sampled")
    keys = list(arrays.keys())
    global_nd = [arrays[k].numpy() for k in keys]
    strategy = _SumOnlyStrategy(nodes, config)
    state = RecordDict({
        MAIN_PARAMS_RECORD: ArrayRecord({k: to_array(a) for k, a in zip(keys, global_nd,
                                                                        strict=True)}),
        MAIN_CONFIGS_RECORD: ConfigRecord({WorkflowKey.CURRENT_ROUND: server_round}),
    })
    context = LegacyContext(Context(run_id=0, node_id=0, node_config={}, state=state,
                                    run_config={}), strategy=strategy)  # type: ignore[arg-type]
    workflow = SecAggPlusWorkflow(
        num_shares=1.0, reconstruction_threshold=settings.threshold,
        max_weight=float(max(1, max_weight)), clipping_range=settings.clipping_range,
        quantization_range=settings.quantization_range, timeout=settings.timeout,
    )
    capture = _ReplyCapture(grid)
    try:
        workflow(capture, context)  # type: ignore[arg-type]
    except ZeroDivisionError:
        # Every site declined (weight 0): there is no sum to unmask.
        strategy.mean_update = None
    replies = capture.train_replies
    rejected = _rejections(replies, nodes)
    contributing = [r for r in replies if not r.has_error() and refusal_reason(r.content) is None]
    if strategy.mean_update is None or not contributing:
        return SecureRound(replies, None, rejected, len(contributing), 0, None)
    mean = strategy.mean_update
    n = np.array([float(r.content[METRICS][NUM_EXAMPLES]) for r in contributing])
    losses = [r.content[METRICS].get(TRAIN_LOSS) for r in contributing]
    loss = (None if any(v is None for v in losses)
            else float((n * np.array(losses, dtype=float)).sum() / n.sum()))
    aggregate = None
    if [u.size for u in mean] == [g.size for g in global_nd]:
        aggregate = ArrayRecord({k: to_array(g + u.astype(g.dtype).reshape(g.shape))
                                 for k, g, u in zip(keys, global_nd, mean, strict=True)})
    return SecureRound(replies, aggregate, rejected, len(contributing), int(n.sum()), loss,
                       mean)


def _rejections(replies: list[Message], nodes: list[int]) -> list[dict]:
    out = []
    answered = {r.metadata.src_node_id for r in replies}
    for r in replies:
        if r.has_error():
            out.append({"site": f"node {r.metadata.src_node_id}",
                        "reason": f"failed during the round: {r.error.reason}"})
        elif (reason := refusal_reason(r.content)) is not None:
            out.append({"site": site_name(r.content), "reason": reason})
    out.extend({"site": f"node {n}", "reason": "dropped out during secure aggregation"}
               for n in nodes if replies and n not in answered)
    return sorted(out, key=lambda r: r["site"])
