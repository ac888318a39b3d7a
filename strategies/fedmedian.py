"""FedMedian: the coordinate-wise median of the sites' weights (Flower's), with vetting.

Each weight of the global model is the median of that weight over the sites (Yin et
al., 2018): fewer than half the sites cannot move it outside the honest sites' range,
whatever they send. Unweighted: a small site counts as much as a large one.
"""

from __future__ import annotations

from flwr.serverapp.strategy import FedMedian as FlowerFedMedian

from strategies.guard import UpdateGuard
from strategies.spec import SECAGG_HIDES_UPDATES, StrategySpec, flower_options


class FedMedian(UpdateGuard, FlowerFedMedian):
    """Coordinate-wise median of the vetted updates."""


def build(fraction_train: float, min_sites: int) -> FedMedian:
    return FedMedian(**flower_options(fraction_train, min_sites))


SPEC = StrategySpec(
    name="fedmedian",
    summary="coordinate-wise median of the sites' weights",
    build=build,
    options={"fraction_train": "fraction_train", "min_sites": "min_sites"},
    refused_dp={"central": "central DP aggregates with FedAvg; use --strategy fedavg"},
    refused_secagg=SECAGG_HIDES_UPDATES.format(name="fedmedian"),
)
