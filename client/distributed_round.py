"""A site's release in a distributed-DP run: one noised vector, checked against its budget.

Every task of a distributed-DP round (:data:`common.protocol.TRAIN_TASK` and the others)
yields one integer vector the site sends only through SecAgg+: every patient's clipped
contribution in integer units (:func:`common.discrete_dp.to_units`), summed, plus the
site's share of the run's Skellam noise (:func:`skellam_share_variance`):

* ``class-counts``: ``[class counts]``;
* ``train``: the clipped gradient sum of every weight tensor, in ``state_dict`` order;
  for the class-centroid model (:mod:`common.centroid`), the sum of the patients' feature
  vectors in the ``centre`` slot (round 1) or the per-class sums of their clipped
  deviations in the ``head.weight`` slot (round 2), zeros elsewhere;
* ``validate`` (once, after the last round): ``[confusion counts]`` of the final model;
* ``feature-centre`` (local DP-SGD, once, at set-up): the sum of the patients' unit
  vectors (:func:`common.patient_centre.unit_rows`).

Before adding noise the site checks that the releases fit its own budget with its
persistent ledger (:mod:`client.privacy`) and records them there; a release that does
not fit raises :class:`client.dp.RoundRefused`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from client.dp import RoundRefused, SitePrivacy
from client.site import Site
from common.config import RunConfig
from common.consortium_setup import ConsortiumSetup
from common.discrete_dp import (
    UNITS,
    bounded,
    integer_scale,
    rounded_sensitivity,
    skellam_share,
    skellam_variance,
    to_units,
)
from common.distributed_dp import NoisePlan
from common.protocol import (
    CENTRE_TASK,
    CLASS_COUNTS_TASK,
    TRAIN_TASK,
    VALIDATE_TASK,
    RoundConfig,
)

logger = logging.getLogger(__name__)

FULL_BATCH = 1.0  # every release covers all of the site's patients (sampling rate 1)


@dataclass
class Release:
    """What the site sends through SecAgg+ and what it spent."""

    vector: list[np.ndarray]
    epsilon: float  # the site's cumulative spend after this release
    delta: float


def release(site: Site, rc: RoundConfig, cfg: RunConfig, privacy: SitePrivacy, *,
            setup: ConsortiumSetup | None, state: dict[str, Any] | None,
            run_id: str) -> Release:
    """The site's noised vector for ``rc.task``; raises RoundRefused past its budget."""
    plan = rc.noise_plan
    if plan is None:
        raise ValueError("a distributed-DP round without a noise plan")
    if rc.task == CLASS_COUNTS_TASK:
        noises = [plan.count_noise]
    elif rc.task == VALIDATE_TASK:
        noises = [plan.validation_noise]
    elif rc.task == CENTRE_TASK:
        noises = [plan.centre_noise]
    elif rc.task == TRAIN_TASK:
        noises = [plan.round_noise(rc.server_round)]
    else:
        raise ValueError(f"unknown distributed-DP task {rc.task!r}")
    _check_budget(privacy, noises)
    if rc.task == CLASS_COUNTS_TASK:
        labels = site.train.labels
        assert labels is not None
        counts = np.bincount(labels, minlength=len(site.train.schema.label_names))
        vector = [_noised(counts * integer_scale(1.0), plan.count_noise, UNITS, plan,
                          privacy)]
    elif rc.task == CENTRE_TASK:
        if setup is None:
            raise ValueError("the feature centre needs the consortium setup")
        vector = [_centre_release(site, setup, plan, privacy)]
    else:
        if setup is None or state is None:
            raise ValueError(f"task {rc.task!r} needs the consortium setup and the weights")
        vector = _model_release(site, rc, cfg, plan, privacy, setup, state)
    _record(privacy, noises, run_id, rc.server_round)
    spent = privacy.ledger.epsilon(privacy.budget.delta)
    logger.info("round %d (%s): released a noised sum; epsilon %.3f of %.3f", rc.server_round,
                rc.task, spent, privacy.budget.epsilon)
    return Release(vector, spent, privacy.budget.delta)


def _centre_release(site: Site, setup: ConsortiumSetup, plan: NoisePlan,
                    privacy: SitePrivacy) -> np.ndarray:
    from client.site import prepared
    from common.patient_centre import unit_rows

    rows = unit_rows(prepared(site.train, setup))
    return _noised(to_units(rows, 1.0).sum(axis=0), plan.centre_noise,
                   rounded_sensitivity(rows.shape[1]), plan, privacy)


def withheld(rc: RoundConfig, received: list[np.ndarray], n_classes: int) -> list[np.ndarray]:
    """Zeros shaped like the release ``rc`` asks for (a refusing site's masked vector)."""
    if rc.task == VALIDATE_TASK:
        return [np.zeros(n_classes * n_classes)]
    return [np.zeros(a.shape) for a in received]


def _model_release(site: Site, rc: RoundConfig, cfg: RunConfig, plan: NoisePlan,
                   privacy: SitePrivacy, setup: ConsortiumSetup, state: dict[str, Any]
                   ) -> list[np.ndarray]:
    import torch

    from client.distributed_dp import clipped_gradient_sum, flatten_in_order
    from client.site import prepared, site_model, validation_metrics
    from common.centroid import CentroidClassifier
    from common.training import select_device, tensors

    device = select_device(site.device or cfg.train.device)
    model = site_model(setup, cfg, state).to(device)
    if rc.task == VALIDATE_TASK:
        metrics = validation_metrics(model, site, setup)
        assert metrics.confusion is not None
        return [_noised(metrics.confusion.ravel() * integer_scale(1.0),
                        plan.validation_noise, UNITS, plan, privacy)]
    x, mask, y = (t.to(device) for t in tensors(prepared(site.train, setup)))
    if isinstance(model, CentroidClassifier):
        sums, _ = centroid_sums(model, x, mask, y, plan, rc.server_round, in_units=True)
        # Coordinates of one patient's row: the projection's, or one per feature.
        dims = plan.projection or x.shape[1]
        return [_noised(v, plan.round_noise(rc.server_round), rounded_sensitivity(dims), plan,
                        privacy) for v in flatten_in_order(sums, state)]
    log_prior = torch.as_tensor(np.log(setup.class_prior), dtype=torch.float32, device=device)
    sums, _ = clipped_gradient_sum(model, x, mask, y, log_prior, plan.clip,
                                   units=integer_scale(plan.clip))
    grads = flatten_in_order(sums, state)
    dims = sum(g.size for g in grads)
    return [_noised(g, plan.gradient_noise, rounded_sensitivity(dims), plan, privacy)
            for g in grads]


def skellam_share_variance(noise_multiplier: float, sensitivity_units: float,
                           min_sites: int) -> float:
    """The variance of one site's Skellam share: ``min_sites`` shares add up to the noise
    the plan accounts for (:func:`common.discrete_dp.skellam_variance`); a round that
    keeps more sites only has more noise than accounted."""
    if min_sites < 1:
        raise ValueError(f"min_sites must be >= 1, got {min_sites}")
    return skellam_variance(noise_multiplier, sensitivity_units) / min_sites


def centroid_sums(model: Any, x: Any, mask: Any, y: Any, plan: NoisePlan,
                  server_round: int, *, in_units: bool = False) -> tuple[dict[str, Any], float]:
    """The class-centroid model's sums by state name, and their sensitivity: round 1 the
    patients' feature vectors (norm <= 1), round 2 each class's clipped deviations; with
    the plan's projection, both projected and clipped again (:func:`projected_rows`), in
    the first columns of the state's shape (the rest is 0). ``in_units``: every patient's
    row in rounded integer units (:func:`common.discrete_dp.to_units`) before the sum."""
    import torch

    from common.centroid import projected_rows

    def units(rows: Any, sensitivity: float) -> Any:
        if projection is not None:
            rows = projected_rows(rows, projection, sensitivity)
        if not in_units:
            return rows
        return torch.from_numpy(to_units(rows.cpu().numpy(), sensitivity)).to(rows.device)

    with torch.no_grad():
        model.projection.copy_(torch.tensor([plan.projection, plan.projection_seed]))
        projection = model.projection_rows()
        if plan.centre_round and server_round == 1:
            return {"centre": units(model.patient_vectors(x, mask), 1.0).sum(dim=0)}, 1.0
        model.radius.fill_(plan.clip)
        deviations = units(model.deviations(x, mask), plan.clip)
        onehot = torch.nn.functional.one_hot(y, model.spec.n_classes).to(deviations.dtype)
        return {"head.weight": onehot.T @ deviations}, plan.clip


def _noised(units: np.ndarray, noise_multiplier: float, sensitivity_units: float,
            plan: NoisePlan, privacy: SitePrivacy) -> np.ndarray:
    variance = skellam_share_variance(noise_multiplier, sensitivity_units, plan.min_sites)
    # The site's floor: its share alone keeps this much noise, whatever others do.
    variance = max(variance, (privacy.noise_floor * sensitivity_units) ** 2)
    return bounded(units, plan.min_sites) + skellam_share(units.shape, variance)


def _check_budget(privacy: SitePrivacy, noises: list[float]) -> None:
    budget = privacy.budget
    after = privacy.ledger.epsilon_with([(s, FULL_BATCH, 1) for s in noises], budget.delta,
                                        discrete=True)
    if after > budget.epsilon:
        spent = privacy.ledger.epsilon(budget.delta)
        raise RoundRefused(f"release would bring epsilon to {after:.4g} > budget "
                           f"{budget.epsilon:.4g} (spent {spent:.4g}, delta {budget.delta:.3g})")


def _record(privacy: SitePrivacy, noises: list[float], run_id: str, server_round: int) -> None:
    from client.privacy import LedgerEntry

    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    for sigma in noises:
        privacy.ledger.record(LedgerEntry(
            run_id=run_id, round=server_round, noise_multiplier=sigma,
            sample_rate=FULL_BATCH, steps=1, timestamp=stamp, delta=privacy.budget.delta,
            mechanism="skellam"))
