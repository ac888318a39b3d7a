"""Local differential privacy for one site's round: budget, noise, Opacus DP-SGD, ledger.

The site alone decides. Its budget comes from its node config (``epsilon``, ``delta``,
``state-dir``, ``max-noise-multiplier``); in simulation, where the runner stands in for
every site's configuration, from the run config. Before training, the site calibrates
the smallest noise multiplier that keeps its planned remaining rounds within budget. It
declines the round when even the largest does not fit, or when the fit needs more noise
than ``max-noise-multiplier`` (the update would be noise only). Otherwise it trains with
Opacus (per-sample clipping, Gaussian noise, Poisson sampling) and appends the steps it
took to its persistent ledger, the account across rounds, runs and restarts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common.config import RunConfig
from common.protocol import DELTA, EPSILON, NOISE_MULTIPLIER
from common.training import EpochStats

logger = logging.getLogger(__name__)

# Opacus per-sample clipping. Ghost clipping (norms from activations and backprops, then
# a second reweighted backward) wins on large models: 2.1x a plain step against 9.4x for
# per-sample hooks on the 2.9 M-parameter default transformer; on the 14 k-parameter
# local-DP model fixed per-step costs dominate and hooks are faster (3.5x against 4.2x).
# Measured by benchmarks/privacy_utility.py.
GHOST_CLIPPING_MIN_PARAMETERS = 200_000


def grad_sample_mode(model: Any) -> str:
    """``"ghost"`` or ``"hooks"``, whichever is faster for a model of this size."""
    from common.model import count_parameters

    return "ghost" if count_parameters(model) >= GHOST_CLIPPING_MIN_PARAMETERS else "hooks"


class RoundRefused(Exception):
    """The site declines a round (its privacy budget would be exceeded)."""


@dataclass
class SitePrivacy:
    budget: Any  # client.privacy.PrivacyBudget
    ledger: Any  # client.privacy.PrivacyLedger
    max_grad_norm: float
    max_noise_multiplier: float
    # Distributed DP: the least noise (x sensitivity) the site's own share carries, so its
    # patients keep a guarantee even if every other site colludes with the coordinator.
    noise_floor: float = 0.0


def site_privacy(
    site_name: str, n_train: int, node_config: dict[str, Any], cfg: RunConfig
) -> SitePrivacy | None:
    """The site's budget and ledger when it trains with local or distributed DP, else None."""
    if cfg.dp not in ("local", "distributed"):
        return None
    from client.privacy import PrivacyBudget, PrivacyLedger, ledger_path
    from common.distributed_dp import DEFAULT_DELTA

    epsilon = float(node_config.get("epsilon", cfg.epsilon))
    # 0 = the default, 1e-5: a default derived from the site's patient count (such as
    # 1/(10 n)) would disclose the count in every epsilon the site reports.
    delta = node_config.get("delta", cfg.delta) or DEFAULT_DELTA
    state_dir = node_config.get("state-dir")
    if state_dir is None:  # simulation: one state directory per virtual hospital
        state_dir = cfg.site_state_root() / site_name
    budget = PrivacyBudget.for_site(epsilon, float(delta), n_train)
    ledger = PrivacyLedger.open(ledger_path(Path(state_dir)))
    max_noise = float(node_config.get("max-noise-multiplier", cfg.max_noise_multiplier))
    floor = float(node_config.get("noise-floor", 0.0))
    if not floor >= 0:
        raise ValueError(f"node config noise-floor must be >= 0, got {floor}")
    return SitePrivacy(budget, ledger, cfg.max_grad_norm, max_noise, floor)


def train_private(
    model: Any,
    loader: Any,
    optimizer: Any,
    cfg: RunConfig,
    privacy: SitePrivacy,
    *,
    epochs: int,
    class_weight: Any,
    progress: tuple[float, float],
    rounds_left: int,
    run_id: str,
    server_round: int,
    device: Any,
    batches: int | None = None,
    reserved: Sequence[tuple[float, float, int]] = (),
    class_prior: Any = None,
) -> tuple[EpochStats, dict[str, float]]:
    """One round of DP-SGD; raises :class:`RoundRefused` when the budget does not allow it.

    ``batches``: Poisson batches per epoch (sampling rate ``1 / batches``); the default
    is the loader's. Local DP derives it from the site's noised patient count, so that
    neither the rate nor the steps disclose the true count. ``reserved``: releases after
    training the budget must still hold (see :func:`client.privacy.calibrate_noise`).
    ``class_prior``: train with the logit-adjusted loss instead of class weights.
    """
    import numpy as np
    import torch
    from opacus import PrivacyEngine
    from opacus.data_loader import DPDataLoader

    from client.privacy import BudgetError, LedgerEntry, calibrate_noise, check_round
    from common.losses import WeightedCrossEntropy
    from common.training import train_epochs

    # Exactly what the Poisson loader below does: rate 1/batches, batches steps an epoch.
    batches = max(1, len(loader) if batches is None else int(batches))
    sample_rate = 1.0 / batches
    steps = epochs * batches
    try:
        sigma = calibrate_noise(privacy.ledger, privacy.budget, sample_rate, steps, rounds_left,
                                reserved=reserved)
    except BudgetError as exc:
        raise RoundRefused(str(exc)) from exc
    reason = check_round(privacy.ledger, privacy.budget, sigma, sample_rate, steps,
                         reserved=reserved)
    if reason is None and sigma > privacy.max_noise_multiplier:
        spent = privacy.ledger.epsilon(privacy.budget.delta)
        reason = (f"the remaining budget (epsilon {spent:.3f} of {privacy.budget.epsilon:g} "
                  f"spent) would need noise multiplier {sigma:.1f} > "
                  f"{privacy.max_noise_multiplier:g}: the update would carry no signal")
    if reason is not None:
        raise RoundRefused(reason)
    # A fresh engine per round: its own accountant is not used, the ledger is the account.
    engine = PrivacyEngine()
    model.train()  # Opacus checks the mode; validation just left the model in eval mode
    offset = None
    if class_prior is not None:
        class_weight = np.ones(len(class_prior), dtype=np.float32)
        offset = torch.log(torch.as_tensor(class_prior, dtype=torch.float32, device=device))
    weights = torch.as_tensor(class_weight, dtype=torch.float32, device=device)
    criterion = WeightedCrossEntropy(weights, cfg.train.label_smoothing, logit_offset=offset)
    poisson = DPDataLoader(loader.dataset, sample_rate=sample_rate, generator=loader.generator)
    made = engine.make_private(
        module=model, optimizer=optimizer, data_loader=poisson, noise_multiplier=sigma,
        max_grad_norm=privacy.max_grad_norm, poisson_sampling=False, criterion=criterion,
        grad_sample_mode=grad_sample_mode(model),
    )
    # Only ghost clipping wraps the criterion (its two backward passes) and returns it.
    if len(made) == 4:
        private_model, private_optimizer, criterion, private_loader = made
    else:
        private_model, private_optimizer, private_loader = made
    # Opacus clips per sample; AMP's gradient scaler does not mix with its optimizer.
    train_cfg = replace(cfg.train, grad_clip=0.0, amp=False)
    stats = train_epochs(private_model, private_loader, private_optimizer, train_cfg,
                         epochs=epochs, class_weight=class_weight, progress=progress,
                         device=device, criterion=criterion)
    privacy.ledger.record(LedgerEntry(
        run_id=run_id, round=server_round, noise_multiplier=sigma, sample_rate=sample_rate,
        steps=stats.steps, timestamp=datetime.now(UTC).isoformat(timespec="seconds"),
        delta=privacy.budget.delta,
    ))
    spent = privacy.ledger.epsilon(privacy.budget.delta)
    logger.info("round %d: DP-SGD sigma %.3f, q %.3f, %d steps; epsilon %.3f of %.3f",
                server_round, sigma, sample_rate, stats.steps, spent, privacy.budget.epsilon)
    return stats, {EPSILON: spent, NOISE_MULTIPLIER: sigma, DELTA: privacy.budget.delta}
