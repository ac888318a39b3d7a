"""Every aggregation strategy by name, the run settings each one accepts, and its builder.

The registry is the one list of strategy names and the one place that decides which
strategy / DP / SecAgg+ combinations a run may use (:func:`check_combination`).
"""

from __future__ import annotations

import inspect
from typing import Any

from common.config import DP_MODES, RunConfig
from strategies import (
    adaptive,
    bulyan,
    central_dp,
    fedavg,
    fedavgm,
    fedmedian,
    fedprox,
    krum,
    trimmedavg,
)
from strategies.guard import VettingRules
from strategies.spec import StrategySpec

SPECS: dict[str, StrategySpec] = {
    spec.name: spec for spec in (
        fedavg.SPEC, fedavgm.SPEC, fedprox.SPEC, adaptive.FEDADAM_SPEC,
        adaptive.FEDYOGI_SPEC, fedmedian.SPEC, trimmedavg.SPEC, krum.SPEC, bulyan.SPEC,
        central_dp.SPEC)
}
# Distributed DP: sites send noised clipped sums through SecAgg+ and the server takes
# the DP step on their sum itself; only plain averaging keeps that sum's guarantee.
DISTRIBUTED_DP = "distributed"
# Distributed DP: the coordinator's gradient step is the aggregate; FedAvg adopts it,
# FedAvgM adds server momentum (post-processing of the noised sums).
DISTRIBUTED_DP_STRATEGIES = ("fedavg", "fedavgm")


def strategy_names() -> tuple[str, ...]:
    """The names a run config may give as ``strategy``."""
    return tuple(name for name, spec in SPECS.items() if spec.selectable)


def aggregator_name(cfg: RunConfig) -> str:
    """The strategy that aggregates ``cfg``'s rounds (central DP replaces FedAvg)."""
    return central_dp.SPEC.name if cfg.dp == "central" else cfg.strategy


def build_strategy(name: str, **options: Any) -> Any:
    """Build strategy ``name``; every option it requires must be given, and only those.

    Raises ValueError naming the valid strategies or options on an unknown name, an
    unknown (e.g. misspelled) option or a missing one.
    """
    spec = SPECS.get(name)
    if spec is None:
        raise ValueError(f"unknown strategy {name!r}; choose from {sorted(SPECS)}")
    valid = sorted(spec.options)
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise ValueError(f"strategy {name!r} has no option(s) {unknown}; its options are {valid}")
    params = inspect.signature(spec.build).parameters
    missing = sorted(k for k in spec.options
                     if k not in options and params[k].default is inspect.Parameter.empty)
    if missing:
        raise ValueError(f"strategy {name!r} needs option(s) {missing}; its options are {valid}")
    return spec.build(**options)


def strategy_for_run(cfg: RunConfig, **computed: Any) -> Any:
    """The aggregator of ``cfg`` built from its run config fields.

    ``computed`` holds the options no RunConfig field feeds (central DP:
    ``noise_multiplier``, calibrated when the run starts).
    """
    check_combination(cfg)
    spec = SPECS[aggregator_name(cfg)]
    options = {opt: getattr(cfg, source) for opt, source in spec.options.items()
               if source is not None}
    strategy = build_strategy(spec.name, **options, **computed)
    strategy.vetting = VettingRules(max_norm_ratio=cfg.max_update_norm_ratio,
                                    direction_ratio=cfg.update_direction_ratio,
                                    quarantine_after=cfg.quarantine_after)
    if cfg.quarantine_after > 0:
        from strategies.quarantine import Quarantine, quarantine_path

        strategy.quarantine = Quarantine(quarantine_path(cfg.out) if cfg.out else None)
    return strategy


def check_combination(cfg: RunConfig) -> None:
    """Raise ValueError unless ``cfg``'s strategy exists and supports its DP and SecAgg+.

    The message says what is wrong and, when the strategy does not run with the DP mode
    or SecAgg+, lists the allowed combinations.
    """
    spec = SPECS.get(cfg.strategy)
    if spec is None or not spec.selectable:
        raise ValueError(f"invalid run configuration: strategy {cfg.strategy!r} is not one of "
                         f"{strategy_names()}")
    refusals = _refusals(spec, cfg.dp, cfg.secagg)
    problems = _option_problems(cfg) + refusals + cfg.schedule_problems()
    if problems:
        allowed = ". Allowed: " + "; ".join(allowed_combinations()) if refusals else ""
        raise ValueError("invalid run configuration: " + "; ".join(problems) + allowed)


def allowed_combinations() -> list[str]:
    """One line per selectable strategy: the DP modes it runs with, with and without SecAgg+."""
    lines = []
    for name in strategy_names():
        spec = SPECS[name]
        plain = [dp for dp in DP_MODES if not _refusals(spec, dp, secagg=False)]
        secure = [dp for dp in DP_MODES if not _refusals(spec, dp, secagg=True)]
        secagg = f"--secagg with --dp {'/'.join(secure)}" if secure else "no --secagg"
        lines.append(f"{name}: --dp {'/'.join(plain)}, {secagg}")
    return lines


def _option_problems(cfg: RunConfig) -> list[str]:
    """Out-of-range robust aggregation and vetting settings."""
    problems = []
    if not 0 <= cfg.trim_fraction < 0.5:
        problems.append(f"trim_fraction must be in [0, 0.5), got {cfg.trim_fraction}")
    if cfg.malicious_sites < 0 or cfg.krum_select < 1:
        problems.append(f"malicious_sites must be >= 0 and krum_select >= 1, got "
                        f"{cfg.malicious_sites} and {cfg.krum_select}")
    if not (cfg.server_lr > 0 and cfg.server_tau > 0):
        problems.append(f"server_lr and server_tau must be > 0, got {cfg.server_lr} and "
                        f"{cfg.server_tau}")
    if cfg.max_update_norm_ratio < 0 or cfg.quarantine_after < 0:
        problems.append("max_update_norm_ratio and quarantine_after must be >= 0 (0: off)")
    if not 0.0 <= cfg.update_direction_ratio <= 1.0:
        problems.append(f"update_direction_ratio must be in [0, 1] (0: off), got "
                        f"{cfg.update_direction_ratio}")
    return problems


def _refusals(spec: StrategySpec, dp: str, secagg: bool) -> list[str]:
    """Why ``spec`` cannot run with ``dp`` (and SecAgg+ when ``secagg``); empty when it can."""
    problems = [spec.refused_dp[dp]] if dp in spec.refused_dp else []
    if dp == DISTRIBUTED_DP:
        if spec.name not in DISTRIBUTED_DP_STRATEGIES:
            problems.append("distributed DP releases only the noised sum of the sites' "
                            "contributions (through SecAgg+); only --strategy "
                            f"{' or '.join(DISTRIBUTED_DP_STRATEGIES)} runs with it")
        return problems  # always through SecAgg+, which these strategies take as one reply
    if secagg:
        aggregator = central_dp.SPEC if dp == "central" else spec
        reasons = dict.fromkeys(r for r in (spec.refused_secagg, aggregator.refused_secagg) if r)
        problems += list(reasons)
    return problems
