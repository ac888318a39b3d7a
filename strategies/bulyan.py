"""Bulyan: multi-Krum selection, then a coordinate-wise trimmed mean around the median.

Of ``n`` updates, multi-Krum keeps ``n - 2f``; for every weight the ``n - 4f`` values
closest to their median are averaged (El Mhamdi et al., 2018; Flower's Bulyan). Needs
``n >= 4f + 3`` (``f``: run config ``malicious-sites``); when the update guard has
rejected updates and fewer remain, ``f`` is lowered to what they allow for that round
(the rejected sites are already out).
"""

from __future__ import annotations

import logging

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import Bulyan as FlowerBulyan

from strategies.guard import UpdateGuard
from strategies.spec import SECAGG_HIDES_UPDATES, StrategySpec, flower_options

logger = logging.getLogger(__name__)


class Bulyan(UpdateGuard, FlowerBulyan):
    """Bulyan over the vetted updates."""

    def aggregate_vetted(
        self, server_round: int, accepted: list[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        # Sites the guard already rejected are out: tolerate as many hostile sites as
        # the updates left allow (n >= 4f + 3) rather than skip the round.
        configured = self.num_malicious_nodes
        self.num_malicious_nodes = min(configured, max(0, (len(accepted) - 3) // 4))
        if self.num_malicious_nodes < configured:
            logger.info("round %d: %d vetted updates, Bulyan tolerates %d hostile sites",
                        server_round, len(accepted), self.num_malicious_nodes)
        try:
            return super().aggregate_vetted(server_round, accepted)
        finally:
            self.num_malicious_nodes = configured


def build(fraction_train: float, min_sites: int, malicious_sites: int) -> Bulyan:
    if malicious_sites < 0:
        raise ValueError(f"bulyan needs malicious_sites >= 0, got {malicious_sites}")
    return Bulyan(**flower_options(fraction_train, min_sites),
                  num_malicious_nodes=malicious_sites)


SPEC = StrategySpec(
    name="bulyan",
    summary="multi-Krum, then a trimmed mean around the median (run config malicious-sites)",
    build=build,
    options={"fraction_train": "fraction_train", "min_sites": "min_sites",
             "malicious_sites": "malicious_sites"},
    refused_dp={"central": "central DP aggregates with FedAvg; use --strategy fedavg"},
    refused_secagg=SECAGG_HIDES_UPDATES.format(name="bulyan"),
)
