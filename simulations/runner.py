"""Run a whole federation on one machine with Flower's simulation engine, in-process.

The ServerApp and ClientApp are the same objects ``flwr run`` loads (built by
``server.app.build_server_app`` / ``client.app.build_client_app``); the runner only
passes the run config to them, sizes the federation to the partition, and afterwards
trains the centralized model and the classical baselines on the same split.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.config import RunConfig, offline_flower_env

if TYPE_CHECKING:
    from common.simulated_federation import SimulatedFederation
    from simulations.attacks import AttackPlan

logger = logging.getLogger(__name__)


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


def simulate(
    cfg: RunConfig, *, compare: bool = True, show_progress: bool = True, verbose: bool = False,
    attack: str | None = None, malicious: int = 1, attackers: str = "largest",
    client_mods: Sequence[Any] = (),
) -> Path:
    """Federated training on the simulation engine; returns the run directory.

    ``attack`` (see :mod:`simulations.attacks`): ``malicious`` hospitals mount it (the
    largest, or ``attackers="random"``: drawn from the run's seed), running the same
    ClientApp. ``client_mods`` wrap every virtual hospital's
    handlers and see each message as it leaves the hospital (e.g. to audit it).
    """
    from strategies import check_combination

    check_combination(cfg)
    offline_flower_env()
    from flwr.simulation import run_simulation

    _flower_logging(verbose)

    from client.app import build_client_app
    from common.simulated_federation import load_federation
    from server.app import build_server_app, default_run_dir

    fed = load_federation(cfg)  # fails fast, with the loader's message, on bad data
    run_id = new_run_id()
    run_dir = default_run_dir(cfg, run_id) if cfg.out else Path("runs") / f"sim-{run_id}"
    # Virtual hospitals keep their ledgers in the run directory (fresh budgets) unless
    # the user named a state directory: RunConfig.site_state_root.
    cfg = replace(cfg, out=str(run_dir))
    overrides = cfg.to_flower()
    n_sites = len(fed.plan.sites)
    if cfg.secure_aggregation and n_sites < 3:
        raise ValueError(f"secure aggregation needs at least 3 sites; the {cfg.partition} "
                         f"partition has {n_sites}"
                         + (" (use --dp local)" if cfg.dp == "distributed" else ""))
    plan = attack_plan(cfg, fed, attack, malicious, attackers) if attack else None
    logger.info("simulating %d hospitals (%s partition), %d rounds -> %s",
                n_sites, cfg.partition, cfg.rounds, run_dir)
    spent_before = spent_budgets(cfg, fed)
    from server.rounds import FederationError

    try:
        with _RoundProgress(cfg.rounds, enabled=show_progress) as progress:
            started = time.perf_counter()
            run_simulation(
                server_app=build_server_app(overrides, run_id=run_id, on_round=progress.update),
                client_app=build_client_app(overrides, mods=client_mods,
                                            train_mods=attack_mods(plan)),
                num_supernodes=n_sites,
                backend_config=_backend_config(),
            )
            wall = time.perf_counter() - started
    except FederationError as exc:
        spent = {site: eps for site, (eps, _) in spent_before.items() if eps > 0}
        if len(spent) <= n_sites - cfg.min_sites:
            raise
        budget = max(b for _, b in spent_before.values())
        # One line instead of every site's refusal: the kept ledgers are the cause.
        low, high = min(spent.values()), max(spent.values())
        raise FederationError(
            f"no round could be trained: the sites declined the round, {len(spent)} of "
            f"{n_sites} virtual hospitals having already spent epsilon {low:.2f} to "
            f"{high:.2f} of their {budget:g} in {cfg.site_state_root()}; name a new "
            "--state-dir, or leave it out so every run starts with fresh budgets") from exc
    if not (run_dir / "metrics.json").exists():
        raise RuntimeError(f"the simulation ended without writing {run_dir}/metrics.json; "
                           "see the log above for the ServerApp error")
    from server.outputs import update_metrics

    update_metrics(run_dir, simulation_wall_seconds=wall)
    if plan is not None:
        update_metrics(run_dir, attack=plan.record())
    if compare:
        from simulations.central import compare_on_split

        update_metrics(run_dir, comparison=compare_on_split(fed, cfg, run_dir))
    return run_dir


def attack_plan(cfg: RunConfig, fed: SimulatedFederation, attack: str, malicious: int,
                attackers: str = "largest") -> AttackPlan:
    """Which hospitals mount ``attack`` (:func:`simulations.attacks.plan_attack`);
    refuses update attacks under SecAgg+ (the simulated attacker forges the plain
    reply)."""
    from simulations.attacks import plan_attack

    plan = plan_attack(attack, malicious, [(s.name, len(s.train)) for s in fed.plan.sites],
                       attackers=attackers, seed=cfg.seed)
    if cfg.secure_aggregation and plan.attack.on_update:
        raise ValueError(f"attack {plan.attack.label} forges the plain update; simulate it "
                         "without secure aggregation (--secagg, --dp distributed); "
                         "label-flip works with it")
    logger.info("attack %s by %s", plan.attack.label, ", ".join(plan.sites))
    return plan


def attack_mods(plan: AttackPlan | None) -> list:
    """The ClientApp train mods of ``plan`` (none without an attack)."""
    from simulations.attacks import attack_mod

    return [] if plan is None else [attack_mod(plan)]


def spent_budgets(cfg: RunConfig, fed: SimulatedFederation) -> dict[str, tuple[float, float]]:
    """Site -> (epsilon already spent, epsilon budget) in the ledgers of a kept state
    directory; empty without local DP or when the ledgers are the run's own (fresh)."""
    if cfg.dp not in ("local", "distributed") or not cfg.state_dir:
        return {}
    from client.dp import site_privacy

    spent = {}
    for site in fed.plan.sites:
        privacy = site_privacy(site.name, len(site.train), {}, cfg)
        if privacy is not None:
            spent[site.name] = (privacy.ledger.epsilon(privacy.budget.delta),
                                privacy.budget.epsilon)
    return spent


def _flower_logging(verbose: bool) -> None:
    """Flower logs each message exchange at INFO on its own handler: keep that for -v.

    Without -v only errors pass: the in-process ``run_simulation`` API this runner uses
    is reported as deprecated at WARNING on every run.
    """
    flower = logging.getLogger("flwr")
    flower.propagate = False  # its own console handler already prints
    flower.setLevel(logging.DEBUG if verbose else logging.ERROR)


def _backend_config() -> dict:
    # One CPU per virtual hospital so sites train in parallel, one torch thread each.
    return {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": os.cpu_count() or 1, "include_dashboard": False,
                      "logging_level": "error", "log_to_driver": False},
    }


class _RoundProgress:
    """A Rich progress bar over rounds, fed by the ServerApp's per-round callback."""

    def __init__(self, rounds: int, enabled: bool) -> None:
        self.rounds, self.enabled = rounds, enabled
        self._progress = None
        self._task = None

    def __enter__(self) -> _RoundProgress:
        if self.enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("[bold]federated rounds"), BarColumn(),
                                      TextColumn("{task.completed}/{task.total}"),
                                      TextColumn("{task.description}"), TimeElapsedColumn())
            self._progress.start()
            self._task = self._progress.add_task("", total=self.rounds)
        return self

    def update(self, record: dict) -> None:
        if self._progress is None:
            return
        val, test = record.get("val", {}), record.get("test", {})
        text = f"val F1m {val.get('f1_macro', float('nan')):.3f}"
        if test:
            text += f"  test F1m {test['f1_macro']:.3f}"
        self._progress.update(self._task, completed=record["round"], description=text)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
