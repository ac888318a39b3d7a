"""Krum and multi-Krum: average the updates closest to their neighbours (Flower's MultiKrum).

Each update is scored by the summed squared distances to its ``n - f - 2`` nearest
others (``f``: run config ``malicious-sites``); the ``krum-select`` best scored are
averaged weighted by examples (Blanchard et al., 2017). ``krum-select`` 1 is Krum (one
site's model per round), more is multi-Krum.
"""

from __future__ import annotations

from flwr.serverapp.strategy import MultiKrum as FlowerMultiKrum

from strategies.guard import UpdateGuard
from strategies.spec import SECAGG_HIDES_UPDATES, StrategySpec, flower_options


class Krum(UpdateGuard, FlowerMultiKrum):
    """Multi-Krum selection, then the sample-weighted mean of the selected updates."""


def build(fraction_train: float, min_sites: int, malicious_sites: int,
          krum_select: int) -> Krum:
    if malicious_sites < 0 or krum_select < 1:
        raise ValueError(f"krum needs malicious_sites >= 0 and krum_select >= 1, got "
                         f"{malicious_sites} and {krum_select}")
    return Krum(**flower_options(fraction_train, min_sites),
                num_malicious_nodes=malicious_sites, num_nodes_to_select=krum_select)


SPEC = StrategySpec(
    name="krum",
    summary="Krum / multi-Krum (run config malicious-sites, krum-select)",
    build=build,
    options={"fraction_train": "fraction_train", "min_sites": "min_sites",
             "malicious_sites": "malicious_sites", "krum_select": "krum_select"},
    refused_dp={"central": "central DP aggregates with FedAvg; use --strategy fedavg"},
    refused_secagg=SECAGG_HIDES_UPDATES.format(name="krum"),
)
