"""FedAvgM: FedAvg with server momentum (Flower's), with update vetting and pooled metrics.

The server treats the averaged update as a pseudo-gradient and applies SGD with momentum
to it (Hsu et al., 2019). Under local DP the momentum averages the sites' noise over
rounds while their signal accumulates.
"""

from __future__ import annotations

from flwr.serverapp.strategy import FedAvgM as FlowerFedAvgM

from strategies.guard import UpdateGuard
from strategies.metrics import pool_evaluation


class FedAvgM(UpdateGuard, FlowerFedAvgM):
    """Sample-weighted averaging, then a server SGD step with momentum."""


def build(fraction_train: float, min_sites: int, server_momentum: float = 0.9,
          **_: object) -> FedAvgM:
    return FedAvgM(
        fraction_train=fraction_train,
        min_train_nodes=min_sites,
        min_evaluate_nodes=min_sites,
        min_available_nodes=min_sites,
        evaluate_metrics_aggr_fn=pool_evaluation,
        server_learning_rate=1.0,
        server_momentum=server_momentum,
    )
