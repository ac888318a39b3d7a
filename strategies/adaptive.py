"""FedAdam and FedYogi: FedAvg, then an adaptive server step on the averaged update
(Flower's).

The averaged update is a pseudo-gradient for an adaptive server optimizer (Reddi et
al., 2021): run config `server-lr` is its learning rate, `server-tau` its adaptivity
(larger: closer to plain SGD). First and second moments decay by 0.9 and 0.99.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAdam as FlowerFedAdam
from flwr.serverapp.strategy import FedYogi as FlowerFedYogi

from strategies.guard import UpdateGuard
from strategies.spec import StrategySpec, flower_options


class KeepGlobalDtypes:
    """The new global model in the dtypes of the current one.

    Flower's adaptive step multiplies by NumPy float64 scalars (FedAdam's bias-corrected
    learning rate), which promote float32 weights to float64; the sites keep training in
    float32, and the update guard would then reject every site's next update for its
    dtype, ending the run after one round.
    """

    current_arrays: dict[str, np.ndarray] | None

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        dtypes = {k: v.dtype for k, v in (self.current_arrays or {}).items()}
        arrays, metrics = super().aggregate_train(server_round, replies)  # type: ignore[misc]
        if arrays is None or not dtypes:
            return arrays, metrics
        return ArrayRecord({k: Array(np.ascontiguousarray(
            a.numpy().astype(dtypes.get(k, a.numpy().dtype), copy=False)))
            for k, a in arrays.items()}), metrics


class FedAdam(KeepGlobalDtypes, UpdateGuard, FlowerFedAdam):
    """Sample-weighted averaging, then a server Adam step."""


class FedYogi(KeepGlobalDtypes, UpdateGuard, FlowerFedYogi):
    """Sample-weighted averaging, then a server Yogi step."""


def _spec(name: str, step: str, cls: type) -> StrategySpec:
    def build(fraction_train: float, min_sites: int, server_lr: float,
              server_tau: float) -> Any:
        if not (server_lr > 0 and server_tau > 0):
            raise ValueError(f"{name} needs server_lr > 0 and server_tau > 0, got "
                             f"{server_lr} and {server_tau}")
        return cls(**flower_options(fraction_train, min_sites), eta=server_lr,
                   tau=server_tau)

    return StrategySpec(
        name=name,
        summary=f"FedAvg, then a server {step} step (run config server-lr, server-tau)",
        build=build,
        options={"fraction_train": "fraction_train", "min_sites": "min_sites",
                 "server_lr": "server_lr", "server_tau": "server_tau"},
        refused_dp={"central": "central DP aggregates with FedAvg; use --strategy fedavg"},
        refused_secagg=("secure aggregation computes the plain weighted mean; use "
                        "--strategy fedavg or fedprox with --secagg"),
    )


FEDADAM_SPEC = _spec("fedadam", "Adam", FedAdam)
FEDYOGI_SPEC = _spec("fedyogi", "Yogi", FedYogi)
