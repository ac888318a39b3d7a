"""FedAvg: sample-weighted averaging (Flower's), with update vetting and pooled metrics."""

from __future__ import annotations

from flwr.serverapp.strategy import FedAvg as FlowerFedAvg

from strategies.guard import UpdateGuard
from strategies.spec import StrategySpec
from strategies.validation_pooling import pool_evaluation


class FedAvg(UpdateGuard, FlowerFedAvg):
    """Weights each site's update by its ``num-examples`` (McMahan et al., 2017)."""


def build(fraction_train: float, min_sites: int) -> FedAvg:
    return FedAvg(
        fraction_train=fraction_train,
        min_train_nodes=min_sites,
        min_evaluate_nodes=min_sites,
        min_available_nodes=min_sites,
        evaluate_metrics_aggr_fn=pool_evaluation,
    )


SPEC = StrategySpec(
    name="fedavg",
    summary="sample-weighted mean of the sites' weights",
    build=build,
    options={"fraction_train": "fraction_train", "min_sites": "min_sites"},
)
