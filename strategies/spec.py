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
