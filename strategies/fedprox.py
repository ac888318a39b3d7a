"""FedProx: FedAvg aggregation plus a proximal term in every site's local loss.

Flower's FedProx sends ``proximal-mu`` in each training config; sites add
``mu / 2 * ||w - w_global||^2`` (``common.losses.ProximalTerm``).
"""

from __future__ import annotations

from flwr.serverapp.strategy import FedProx as FlowerFedProx

from strategies.guard import UpdateGuard
from strategies.spec import StrategySpec
from strategies.validation_pooling import pool_evaluation


class FedProx(UpdateGuard, FlowerFedProx):
    """FedAvg with a proximal term (Li et al., 2020)."""


def build(fraction_train: float, min_sites: int, proximal_mu: float) -> FedProx:
    return FedProx(
        fraction_train=fraction_train,
        min_train_nodes=min_sites,
        min_evaluate_nodes=min_sites,
        min_available_nodes=min_sites,
        evaluate_metrics_aggr_fn=pool_evaluation,
        proximal_mu=proximal_mu,
    )


SPEC = StrategySpec(
    name="fedprox",
    summary="FedAvg with a proximal term in every site's local loss",
    build=build,
    options={"fraction_train": "fraction_train", "min_sites": "min_sites",
             "proximal_mu": "proximal_mu"},
    refused_dp={
        # Opacus computes per-sample gradients of the data loss only; the proximal term's
        # gradient would bypass clipping and noise.
        "local": "fedprox cannot be combined with local DP; use fedavg",
        "central": "central DP aggregates with FedAvg; use --strategy fedavg",
    },
)
