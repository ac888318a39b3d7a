"""One round's exchange with the sites, plain or under SecAgg+, always through the strategy.

The strategy configures every round (node sampling, its own config keys such as FedProx's
``proximal-mu``) and aggregates it (its update guard, then its aggregation and
post-aggregation step, e.g. FedAvgM's momentum). In a plain round it aggregates the
sites' replies; under SecAgg+ the protocol yields only the sum of the updates, which the
strategy receives as one reply of the whole consortium (:mod:`server.secagg`): its guard
then checks the aggregate's parameter names, shapes and finiteness.

Sites keep the consortium setup for the run (:mod:`common.consortium_setup`): the
executor sends it to every node it has not sent it to yet, and again to a node whose
reply says the setup is missing (a restarted SuperNode); a plain round then retries that
node's message at once, a secure round goes on without it and the node gets the setup
before the next round.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from common.consortium_setup import ConsortiumSetup, is_setup_missing
from common.protocol import CONFIG, site_name
from server.monitoring import update_sizes
from server.rounds.consortium import send_setup
from server.rounds.exchange import exchange, resent
from server.secagg import SecAggSettings, SecureRound, secure_train_round

if TYPE_CHECKING:
    from server.rounds.admission import Membership
    from server.rounds.distributed import DistributedRun

logger = logging.getLogger(__name__)

LOST_REASON = "no reply: the site went offline or timed out mid-round"


@dataclass
class TrainingReplies:
    """A training round's replies, before the strategy aggregates them."""

    server_round: int
    replies: list[Message]  # the sites' replies (weights only in plain rounds)
    lost: list[int] = field(default_factory=list)  # nodes that never answered
    secure: SecureRound | None = None  # SecAgg+: the protocol's result
    request: Message | None = None  # SecAgg+: the message the aggregate answers


@dataclass
class TrainResult:
    """What one aggregated training round yields to the round loop."""

    replies: list[Message]  # the sites' replies (weights only in plain rounds)
    arrays: ArrayRecord | None  # the new global weights; None: nothing usable
    metrics: MetricRecord | None  # the strategy's aggregated training metrics
    rejected: list[dict]  # {"site", "reason"[, "node"]}: updates not aggregated
    accepted: int  # sites whose update is in the aggregate
    update_bytes: dict[str, int] | None = None  # per site; None under SecAgg+


class RoundExecutor:
    """Runs the training and evaluation exchanges of a run's rounds on ``grid``."""

    def __init__(self, grid: Grid, strategy: Any, setup: ConsortiumSetup, *, timeout: float,
                 secagg: SecAggSettings | None = None, max_weight: int = 1,
                 distributed: DistributedRun | None = None,
                 membership: Membership | None = None, local_validation: bool = False) -> None:
        self.grid, self.strategy, self.setup = grid, strategy, setup
        self.membership = membership  # None: every connected node takes part
        self.timeout, self.secagg, self.max_weight = timeout, secagg, max_weight
        self.distributed = distributed  # distributed DP: the sites send noised sums
        # Local DP with DP-SGD: validation only as every site's noised counts
        # (server.rounds.local_dp); local DP's noised sums (``distributed`` without SecAgg+)
        # validate the same way.
        self.local_validation = local_validation
        self.with_setup: set[int] = set()  # nodes that acknowledged the setup
        self.names: dict[int, str] = {}  # node id -> site name, from the replies seen

    def ensure_setup(self, nodes: list[int]) -> None:
        """Send the setup to those of ``nodes`` that have not acknowledged it."""
        missing = sorted(set(nodes) - self.with_setup)
        if missing:
            self.with_setup |= send_setup(self.grid, missing, self.setup, self.timeout)

    def collect_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord
                      ) -> TrainingReplies:
        """Send the round's training messages (the strategy's) and collect the replies."""
        messages = self._to_members(self.strategy.configure_train(server_round, arrays, config,
                                                                  self.grid))
        self.ensure_setup([m.metadata.dst_node_id for m in messages])
        if self.secagg is None:
            replies, lost = self._exchange(messages)
            if self.distributed is not None and messages:  # local DP's noised sums
                from server.rounds.local_dp import collect_releases

                secure = collect_releases(replies, lost, "train").as_secure_round()
                self.distributed.open_training(secure, arrays, server_round)
                return TrainingReplies(server_round, secure.replies, secure=secure,
                                       request=messages[0])
            return TrainingReplies(server_round, replies, lost)
        if not messages:
            return TrainingReplies(server_round, [])
        secure = secure_train_round(
            self.grid, server_round, arrays, [m.metadata.dst_node_id for m in messages],
            messages[0].content[CONFIG], max_weight=self.max_weight, settings=self.secagg)
        self._note(secure.replies)
        if self.distributed is not None:
            self.distributed.open_training(secure, arrays, server_round)
        return TrainingReplies(server_round, secure.replies, secure=secure,
                               request=messages[0])

    def aggregate_train(self, collected: TrainingReplies) -> TrainResult:
        """The strategy's aggregate of ``collected`` (its state, e.g. server momentum or
        central DP releases, advances here, after the previous round's checkpoint)."""
        rnd, secure = collected.server_round, collected.secure
        if secure is None:
            replies = collected.replies
            new, metrics = self.strategy.aggregate_train(rnd, replies)
            rejected = list(self.strategy.rejected) + [
                {"site": self.names.get(node, "?"), "node": node, "reason": LOST_REASON}
                for node in collected.lost]
            return TrainResult(replies, new, metrics, rejected,
                               len(replies) - len(self.strategy.rejected),
                               update_sizes(replies))
        if secure.aggregate is None or collected.request is None:
            return TrainResult(secure.replies, None, None, secure.rejected, secure.accepted)
        new, metrics = self.strategy.aggregate_train(rnd, [secure.as_reply(collected.request)])
        rejected = secure.rejected + list(self.strategy.rejected)
        return TrainResult(secure.replies, new, metrics, rejected,
                           secure.accepted if new is not None else 0)

    def train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord
              ) -> TrainResult:
        """One training round: :meth:`collect_train`, then :meth:`aggregate_train`."""
        return self.aggregate_train(self.collect_train(server_round, arrays, config))

    def evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord
                 ) -> list[Message]:
        """Validation replies of the sites the strategy samples for evaluation."""
        messages = self._to_members(self.strategy.configure_evaluate(server_round, arrays,
                                                                     config, self.grid))
        self.ensure_setup([m.metadata.dst_node_id for m in messages])
        if self.distributed is not None and self.secagg is not None:
            return self._secure_validation(server_round, arrays, config, messages)
        if self.local_validation or self.distributed is not None:
            from server.rounds.local_dp import noised_validation

            if not messages:
                return []
            return noised_validation(self.grid, [m.metadata.dst_node_id for m in messages],
                                     arrays, config, server_round,
                                     self.setup.schema.n_classes, messages[0], self.timeout)
        return self._exchange(messages)[0]

    def _secure_validation(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           messages: list[Message]) -> list[Message]:
        """Distributed DP: validation only as a noised sum, in a secure validate round."""
        from common.protocol import SERVER_ROUND, TASK, VALIDATE_TASK

        assert self.distributed is not None and self.secagg is not None
        if not messages:
            return []
        config = ConfigRecord({**dict(config), TASK: VALIDATE_TASK, SERVER_ROUND: server_round})
        secure = secure_train_round(
            self.grid, server_round, arrays, [m.metadata.dst_node_id for m in messages],
            config, max_weight=self.max_weight, settings=self.secagg)
        reply = self.distributed.open_validation(secure, messages[0])
        # The sites' replies carry the epsilon they spent on this release.
        return [*secure.replies, *([reply] if reply is not None else [])]

    def _to_members(self, messages: Iterable[Message]) -> list[Message]:
        """``messages`` addressed to the run's members only (see :mod:`.admission`)."""
        messages = list(messages)
        if self.membership is None:
            return messages
        members = self.membership.members_among(m.metadata.dst_node_id for m in messages)
        return [m for m in messages if m.metadata.dst_node_id in members]

    def _exchange(self, messages: list[Message]) -> tuple[list[Message], list[int]]:
        """:func:`exchange`, sending the setup again to sites that lack it and retrying."""
        replies, lost = exchange(self.grid, messages, self.timeout)
        missing = self._note(replies)
        if missing:
            logger.warning("node(s) %s lack the consortium setup; sending it again",
                           sorted(missing))
            stored = send_setup(self.grid, sorted(missing), self.setup, self.timeout)
            self.with_setup |= stored
            retry = [m for m in messages if m.metadata.dst_node_id in stored]
            again, lost_again = exchange(self.grid, resent(retry), self.timeout)
            replies = [r for r in replies if r.metadata.src_node_id not in stored] + again
            lost += lost_again
            self._note(again)
        return replies, lost

    def _note(self, replies: list[Message]) -> set[int]:
        """Remember site names; return (and forget the setup of) nodes lacking the setup."""
        missing = set()
        for reply in replies:
            node = reply.metadata.src_node_id
            if not reply.has_error():
                self.names[node] = site_name(reply.content)
            elif is_setup_missing(reply.error.reason):
                missing.add(node)
        self.with_setup -= missing
        return missing
