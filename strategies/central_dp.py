"""Central differential privacy: the server clips each site's update and noises the mean.

Site-level DP (neighbouring federations differ in one site's whole contribution): each
vetted update ``w_i - w_global`` is clipped to L2 norm ``C``, the clipped updates are
averaged with equal weights over the ``n`` accepted sites (sensitivity ``C / n``), and
Gaussian noise of standard deviation ``z * C / n`` is added to every coordinate. Every
round is one Gaussian mechanism on all sites (no sampling amplification), accounted
with Rényi DP over the rounds released. Unlike local DP, the server sees the sites'
clean updates: choose it when the coordinator is trusted and only the released model
must be private (see docs/privacy.md, "Central DP or local DP").
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg

from common.distributed_dp import gaussian_epsilon, gaussian_noise_for
from common.protocol import ARRAYS, to_array
from strategies.guard import UpdateGuard
from strategies.spec import StrategySpec
from strategies.validation_pooling import pool_evaluation

logger = logging.getLogger(__name__)


def central_epsilon(noise_multiplier: float, rounds: int, delta: float) -> float:
    """Epsilon after ``rounds`` releases of the Gaussian mechanism (RDP accountant)."""
    if rounds <= 0:
        return 0.0
    return gaussian_epsilon([(noise_multiplier, rounds)], delta, _orders())


def calibrate_central_noise(epsilon: float, delta: float, rounds: int) -> float:
    """Smallest noise multiplier keeping ``rounds`` releases within (epsilon, delta)."""
    if rounds < 1:
        raise ValueError(f"central DP needs at least one round, got {rounds}")
    # One release at sigma costs what `rounds` releases at sigma * sqrt(rounds) cost.
    return gaussian_noise_for(epsilon, delta, _orders()) * math.sqrt(rounds)


def _orders() -> list[float]:
    """Opacus' whole grid of Rényi orders: the central noise is continuous Gaussian."""
    from opacus.accountants.rdp import RDPAccountant

    return RDPAccountant.DEFAULT_ALPHAS


class CentralDPFedAvg(UpdateGuard, FlowerFedAvg):
    """Equal-weight FedAvg of clipped updates plus calibrated Gaussian noise."""

    def __init__(self, *, noise_multiplier: float, clipping_norm: float, seed: int,
                 **fedavg_options: object) -> None:
        super().__init__(**fedavg_options)  # type: ignore[arg-type]
        if noise_multiplier <= 0 or clipping_norm <= 0:
            raise ValueError("central DP needs a positive noise multiplier and clipping norm")
        self.noise_multiplier = noise_multiplier
        self.clipping_norm = clipping_norm
        self.releases = 0
        self._rng = np.random.default_rng(seed)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        accepted = self.vet(server_round, replies)
        if not accepted:
            return None, None
        reference = {k: v.numpy().astype(np.float64) for k, v in self._reference.items()}
        total = {k: np.zeros_like(v) for k, v in reference.items()}
        for msg in accepted:
            arrays = msg.content[ARRAYS]
            delta = {k: arrays[k].numpy().astype(np.float64) - reference[k] for k in reference}
            norm = float(np.sqrt(sum(float((d**2).sum()) for d in delta.values())))
            scale = min(1.0, self.clipping_norm / norm) if norm > 0 else 1.0
            for k, d in delta.items():
                total[k] += scale * d
        n = len(accepted)
        std = self.noise_multiplier * self.clipping_norm / n
        new = {
            k: (reference[k] + total[k] / n + self._rng.normal(0.0, std, size=total[k].shape))
            .astype(self._reference[k].numpy().dtype)
            for k in reference
        }
        self.releases += 1
        logger.info("round %d: central DP mean of %d clipped updates, noise std %.4g",
                    server_round, n, std)
        metrics = self.train_metrics_aggr_fn([m.content for m in accepted],
                                             self.weighted_by_key)
        return ArrayRecord({k: to_array(v) for k, v in new.items()}), metrics


def build(fraction_train: float, min_sites: int, noise_multiplier: float,
          clipping_norm: float, seed: int) -> CentralDPFedAvg:
    return CentralDPFedAvg(
        noise_multiplier=noise_multiplier, clipping_norm=clipping_norm, seed=seed,
        fraction_train=fraction_train, min_train_nodes=min_sites,
        min_evaluate_nodes=min_sites, min_available_nodes=min_sites,
        evaluate_metrics_aggr_fn=pool_evaluation,
    )


SPEC = StrategySpec(
    name="central-dp",
    summary="equal-weight FedAvg of clipped updates plus Gaussian noise (--dp central)",
    build=build,
    options={"fraction_train": "fraction_train", "min_sites": "min_sites",
             "noise_multiplier": None, "clipping_norm": "max_grad_norm", "seed": "seed"},
    refused_dp={"none": "the central DP aggregator runs only with --dp central",
                "local": "the central DP aggregator runs only with --dp central"},
    refused_secagg=("secure aggregation hides the individual updates that central DP must "
                    "clip; combine --secagg with --dp local or none"),
    selectable=False,
)
