"""What a strategy declares about itself: its options and the settings it works with."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class StrategySpec:
    """One aggregation strategy as the registry knows it."""

    name: str
    summary: str
    build: Callable[..., Any]
    # Option name -> the RunConfig field that feeds it; None: the coordinator computes it
    # when the run starts (e.g. central DP's calibrated noise multiplier).
    options: Mapping[str, str | None]
    # DP mode ("none", "local", "central") -> why this strategy cannot run with it.
    refused_dp: Mapping[str, str] = field(default_factory=dict)
    # Why this strategy cannot aggregate under SecAgg+; empty when it can.
    refused_secagg: str = ""
    # False: not named with --strategy but chosen by another setting (e.g. --dp central).
    selectable: bool = True


def flower_options(fraction_train: float, min_sites: int) -> dict[str, Any]:
    """The keyword arguments every Flower strategy here is built with: node sampling
    and the pooled validation metrics."""
    from strategies.validation_pooling import pool_evaluation

    return {"fraction_train": fraction_train, "min_train_nodes": min_sites,
            "min_evaluate_nodes": min_sites, "min_available_nodes": min_sites,
            "evaluate_metrics_aggr_fn": pool_evaluation}


# Why robust aggregators cannot run under SecAgg+ (they need each site's update).
SECAGG_HIDES_UPDATES = ("secure aggregation reveals only the sum of the updates, and {name} "
                        "must see each update; use --strategy fedavg or fedprox with --secagg "
                        "(site-side clipping, see docs/federation.md)")
