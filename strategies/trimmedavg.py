"""Trimmed mean: per coordinate, drop the extremes, average the rest (Flower's FedTrimmedAvg).

For every weight, the ``trim-fraction`` largest and smallest site values are dropped
and the others averaged (Yin et al., 2018). With ``n`` sites it tolerates
``floor(trim_fraction * n)`` hostile ones; unweighted, like the median, but it keeps
more of the honest sites' information.
"""

from __future__ import annotations

from flwr.serverapp.strategy import FedTrimmedAvg as FlowerFedTrimmedAvg

from strategies.guard import UpdateGuard
from strategies.spec import SECAGG_HIDES_UPDATES, StrategySpec, flower_options


class TrimmedAvg(UpdateGuard, FlowerFedTrimmedAvg):
    """Coordinate-wise trimmed mean of the vetted updates."""


def build(fraction_train: float, min_sites: int, trim_fraction: float) -> TrimmedAvg:
    if not 0 <= trim_fraction < 0.5:
        raise ValueError(f"trim_fraction must be in [0, 0.5), got {trim_fraction}")
    return TrimmedAvg(**flower_options(fraction_train, min_sites), beta=trim_fraction)


SPEC = StrategySpec(
    name="trimmedavg",
    summary="coordinate-wise trimmed mean (run config trim-fraction cut from each tail)",
    build=build,
    options={"fraction_train": "fraction_train", "min_sites": "min_sites",
             "trim_fraction": "trim_fraction"},
    refused_dp={"central": "central DP aggregates with FedAvg; use --strategy fedavg"},
    refused_secagg=SECAGG_HIDES_UPDATES.format(name="trimmedavg"),
)
