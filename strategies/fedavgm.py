"""FedAvgM: FedAvg with server momentum (Flower's), with update vetting and pooled metrics.

The server treats the averaged update as a pseudo-gradient and applies SGD with momentum
to it (Hsu et al., 2019). Under local DP the momentum averages the sites' noise over
rounds while their signal accumulates.
"""

from __future__ import annotations

from flwr.serverapp.strategy import FedAvgM as FlowerFedAvgM

from strategies.guard import UpdateGuard
from strategies.spec import StrategySpec
from strategies.validation_pooling import pool_evaluation


class FedAvgM(UpdateGuard, FlowerFedAvgM):
    """Sample-weighted averaging, then a server SGD step with momentum."""


def build(fraction_train: float, min_sites: int, server_momentum: float) -> FedAvgM:
    return FedAvgM(
        fraction_train=fraction_train,
        min_train_nodes=min_sites,
        min_evaluate_nodes=min_sites,
        min_available_nodes=min_sites,
        evaluate_metrics_aggr_fn=pool_evaluation,
        server_learning_rate=1.0,
        server_momentum=server_momentum,
    )


SPEC = StrategySpec(
    name="fedavgm",
    summary="FedAvg, then a server SGD step with momentum",
    build=build,
    options={"fraction_train": "fraction_train", "min_sites": "min_sites",
             "server_momentum": "server_momentum"},
    refused_dp={"central": "central DP aggregates with FedAvg; use --strategy fedavg"},
    refused_secagg=("secure aggregation computes the plain weighted mean; use --strategy "
                    "fedavg or fedprox with --secagg"),
)
