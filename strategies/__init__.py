"""Aggregation strategies, one per module; :func:`build_strategy` picks one by name."""

from __future__ import annotations

from typing import Any


def build_strategy(name: str, **options: Any):
    """``fedavg`` or ``fedprox`` built with the run's options (see each module's ``build``)."""
    from strategies import fedavg, fedprox

    builders = {"fedavg": fedavg.build, "fedprox": fedprox.build}
    if name not in builders:
        raise ValueError(f"unknown strategy {name!r}; choose from {sorted(builders)}")
    return builders[name](**options)
