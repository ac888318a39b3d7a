"""Aggregation strategies, one per module; :mod:`strategies.registry` knows them by name."""

from strategies.registry import (
    build_strategy,
    check_combination,
    strategy_for_run,
    strategy_names,
)

__all__ = ["build_strategy", "check_combination", "strategy_for_run", "strategy_names"]
