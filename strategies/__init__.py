"""Aggregation strategies, one per module; :func:`build_strategy` picks one by name."""

from __future__ import annotations

from typing import Any


def build_strategy(name: str, **options: Any):
    """``fedavg``, ``fedavgm`` (server momentum), ``fedprox`` or ``central-dp`` (FedAvg with
    server-side clipping and noise) built with the run's options (see each ``build``)."""
    from strategies import central_dp, fedavg, fedavgm, fedprox

    builders = {"fedavg": fedavg.build, "fedavgm": fedavgm.build, "fedprox": fedprox.build,
                "central-dp": central_dp.build}
    if name not in builders:
        raise ValueError(f"unknown strategy {name!r}; choose from {sorted(builders)}")
    return builders[name](**options)
