"""The coordinator's side of local DP: noised releases that travel as they are.

Under local DP every value a site reports is a noised release (:mod:`client.distributed_round`)
whose noise the plan sizes for one site (``min_sites`` 1): each release carries the
whole noise on its own, so it needs no secure aggregation and the coordinator sees every
site's noised vector, each covered by that site's guarantee. A site refuses a plan with
less (:func:`client.app.release_refusal`). The releases are:

* at set-up, the class counts of the site's training patients, which the coordinator
  adds up for the class weights and keeps per site (the site's noised patient total);
* the class-centroid model (:mod:`common.centroid`): its two training rounds, the noised
  sums of distributed DP (:mod:`server.rounds.distributed`), added up here instead of
  by SecAgg+;
* other models train with DP-SGD at the site (:mod:`client.dp`); the site derives its
  sampling rate from its noised total and reports it as its weight;
* after the last round, the final model's validation confusion counts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from common.centroid import CENTROID_KIND
from common.config import RunConfig
from common.discrete_dp import integer_scale
from common.distributed_dp import DEFAULT_DELTA, NoisePlan
from common.protocol import (
    ARRAYS,
    CLASS_COUNTS_TASK,
    CONFIG,
    VALIDATE_TASK,
    RoundConfig,
    refusal_reason,
    site_name,
    to_array,
)
from server.rounds.exchange import exchange
from server.secagg import SecureRound

logger = logging.getLogger(__name__)


def local_noise_plan(cfg: RunConfig) -> NoisePlan:
    """The run's plan with every release's noise sized for one site. Every local-DP run
    releases a centre: the class-centroid model's round 1, or DP-SGD's feature centre at
    set-up (whose gradient rounds are DP-SGD's own, so the plan's count of them only
    sizes shares it does not use)."""
    rounds = cfg.rounds if cfg.model.kind == CENTROID_KIND else max(cfg.rounds, 2)
    return NoisePlan.calibrate(cfg.epsilon, cfg.delta or DEFAULT_DELTA, rounds,
                               cfg.max_grad_norm, 1, centre_round=True)


@dataclass
class Releases:
    """What the sites answered to one noised-release request."""

    vectors: dict[int, list[np.ndarray]]  # node -> the site's noised vector, integer units
    names: dict[int, str]  # node -> site
    failed: list[dict]  # {"site", "node", "reason"}: refused, failed or lost
    replies: list[Message]  # as received (they carry the epsilon each site spent)

    def total(self) -> list[np.ndarray] | None:
        """The sites' vectors added up (integer units), None if no site released."""
        if not self.vectors:
            return None
        return [np.sum(parts, axis=0) for parts in zip(*self.vectors.values(), strict=True)]

    def as_secure_round(self) -> SecureRound:
        """The sum in the form a secure round yields it (the mean of the sites' vectors),
        for :class:`server.rounds.distributed.DistributedRun` to open."""
        total = self.total()
        accepted = len(self.vectors)
        return SecureRound(
            replies=self.replies, aggregate=None,
            rejected=[{"site": f["site"], "reason": f["reason"]} for f in self.failed],
            accepted=accepted, num_examples=accepted, train_loss=None,
            mean_update=None if total is None else [t / accepted for t in total])


def collect_releases(replies: list[Message], lost: list[int], task: str) -> Releases:
    """Sort a release request's replies into vectors, names and failures."""
    out = Releases({}, {}, [{"site": "?", "node": n, "reason": "no reply"} for n in lost],
                   replies)
    for reply in replies:
        node = reply.metadata.src_node_id
        if reply.has_error():
            out.failed.append({"site": "?", "node": node, "reason": reply.error.reason})
            continue
        out.names[node] = site_name(reply.content)
        reason = refusal_reason(reply.content)
        if reason is not None or ARRAYS not in reply.content:
            out.failed.append({"site": out.names[node], "node": node,
                               "reason": reason or "no release in the reply"})
            continue
        out.vectors[node] = [np.asarray(a.numpy(), dtype=np.float64)
                             for a in reply.content[ARRAYS].values()]
    for problem in out.failed:
        logger.warning("site %s (node %s): no noised %s: %s", problem["site"],
                       problem["node"], task, problem["reason"])
    return out


def request_releases(grid: Grid, nodes: list[int], arrays: ArrayRecord, config: ConfigRecord,
                     timeout: float) -> Releases:
    """Ask ``nodes`` for the release ``config`` names, sent with ``arrays`` (the weights
    of the model it concerns, or a placeholder)."""
    messages = [Message(RecordDict({ARRAYS: arrays, CONFIG: config}),
                        message_type=MessageType.TRAIN, dst_node_id=node) for node in nodes]
    replies, lost = exchange(grid, messages, timeout)
    return collect_releases(replies, lost, str(RoundConfig.from_record(config).task))


def noised_class_counts(grid: Grid, nodes: list[int], plan: NoisePlan, n_classes: int,
                        timeout: float,
                        accounted: Callable[[ConfigRecord], ConfigRecord] | None = None
                        ) -> Releases:
    """Every site's class counts of its training patients, noised by the site;
    ``accounted`` adds the run's key and the sites' earlier spend to the request."""
    config = RoundConfig(task=CLASS_COUNTS_TASK, noise_plan=plan).to_record()
    if accounted is not None:
        config = accounted(config)
    placeholder = ArrayRecord({CLASS_COUNTS_TASK: to_array(np.zeros(n_classes))})
    return request_releases(grid, nodes, placeholder, config, timeout)


def values_of_units(units: np.ndarray) -> np.ndarray:
    """Values from integer units at sensitivity 1: class counts, sums of unit vectors."""
    return np.asarray(units, dtype=np.float64) / integer_scale(1.0)


def noised_validation(grid: Grid, nodes: list[int], arrays: ArrayRecord, config: ConfigRecord,
                      server_round: int, n_classes: int, request: Message, timeout: float
                      ) -> list[Message]:
    """The final model's validation: every site's noised confusion counts, added up into
    one pooled reply, after the sites' own replies (which carry the epsilon they spent)."""
    from common.protocol import SERVER_ROUND, TASK
    from server.rounds.distributed import validation_reply

    record = ConfigRecord({**dict(config), TASK: VALIDATE_TASK, SERVER_ROUND: server_round})
    releases = request_releases(grid, nodes, arrays, record, timeout)
    total = releases.total()
    pooled = [] if total is None else [validation_reply(values_of_units(total[0]), n_classes,
                                                        request)]
    return [*releases.replies, *pooled]
