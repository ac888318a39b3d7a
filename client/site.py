"""One hospital's side of a federated round: its data, local training and evaluation.

Where a site finds its data comes from its node config only:

* ``data-dir`` (deployment): the site's own dataset directory; a stratified
  ``val-fraction`` of it is held out for local validation. Optional ``manifest`` and
  ``site-name``.
* ``data-dir`` with ``partition-id`` and ``num-partitions`` (demonstrations and tests
  on one shared dataset, read in place): the site is hospital ``partition-id`` of the
  ``partition`` (node config, default ``iid``) of ``data-dir`` into ``num-partitions``
  hospitals, built exactly as the simulation engine builds it (the global test split is
  held out and given to no site). Which slice a node holds is node configuration.
* ``partition-id`` alone (simulation): hospital number ``partition-id`` of the simulated
  federation described by the run config (see :mod:`common.simulated_federation`).

Optional ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:1``, ...) overrides the run
config's ``train.device`` on this site only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from common.config import RunConfig
from common.consortium_setup import ConsortiumSetup
from common.dataset.multiomics import MultiOmicsData
from common.preprocessing import FeatureStats
from common.protocol import (
    DELTA,
    NOISE_MULTIPLIER,
    RoundConfig,
    SiteDescription,
    SiteMetrics,
)

if TYPE_CHECKING:
    from client.dp import SitePrivacy

logger = logging.getLogger(__name__)


@dataclass
class Site:
    name: str
    train: MultiOmicsData  # raw values; standardized per round with the server's statistics
    val: MultiOmicsData
    device: str = ""  # node config override of train.device ("" = the run config's)


def load_site(node_config: dict[str, Any], cfg: RunConfig) -> Site:
    device = str(node_config.get("device", ""))
    if "data-dir" in node_config:
        name = str(node_config.get("site-name", ""))
        manifest = str(node_config.get("manifest", ""))
        if "num-partitions" in node_config or "partition-id" in node_config:
            site = _partition_of_directory(
                str(node_config["data-dir"]), manifest,
                str(node_config.get("partition", "iid")),
                int(node_config.get("num-partitions", 0)),
                int(node_config.get("partition-id", -1)), cfg,
            )
            return replace(site, name=name or site.name, device=device)
        site = _own_directory(str(node_config["data-dir"]), manifest, name, cfg.val_fraction,
                              cfg.seed)
        return replace(site, device=device)
    if "partition-id" in node_config:
        from common.simulated_federation import load_federation

        name, train, val = load_federation(cfg).site_data(int(node_config["partition-id"]))
        return Site(name, train, val, device)
    raise ValueError("node config names no data: set data-dir (deployment) or run under the "
                     "simulation engine (partition-id)")


def _partition_of_directory(data_dir: str, manifest: str, partition: str, num_partitions: int,
                            partition_id: int, cfg: RunConfig) -> Site:
    """Hospital ``partition_id`` of ``data_dir`` split as the simulation engine splits it."""
    from common.simulated_federation import SplitSettings, build_federation

    if num_partitions < 1 or partition_id < 0:
        raise ValueError(f"node config: partition-id ({partition_id}) and num-partitions "
                         f"({num_partitions}) must both be set, with num-partitions >= 1")
    fed = build_federation(replace(
        SplitSettings.of(cfg), data=data_dir, test_data="", manifest=manifest,
        partition=partition, sites=num_partitions,
    ))
    if len(fed.plan.sites) != num_partitions:
        raise ValueError(f"node config: the {partition} partition of {data_dir} has "
                         f"{len(fed.plan.sites)} hospitals, not num-partitions={num_partitions}")
    name, train, val = fed.site_data(partition_id)
    return Site(name, train, val)


@lru_cache(maxsize=2)
def _own_directory(data_dir: str, manifest: str, name: str, val_fraction: float,
                   seed: int) -> Site:
    from common.dataset import load_dataset
    from common.partition import split_validation

    data = load_dataset(Path(data_dir), manifest=Path(manifest) if manifest else None)
    assert data.labels is not None
    train, val = split_validation(np.arange(data.n), data.labels, seed, val_fraction)
    return Site(name or Path(data_dir).name, data.subset(train), data.subset(val))


def describe(site: Site, *, private: bool = False) -> SiteDescription:
    """Schema, class counts and shareable feature statistics of the site's training data.

    ``private`` (distributed DP): the schema only, feature and label names; the counts
    reach the coordinator as a noised consortium sum (:mod:`client.distributed_round`).
    """
    if private:
        return SiteDescription(site=site.name, schema=site.train.schema)
    return SiteDescription(
        site=site.name,
        schema=site.train.schema,
        n_train=site.train.n,
        n_val=site.val.n,
        class_counts=site.train.class_counts(),
        stats=FeatureStats.of(site.train).shareable(),
    )


def prepared(data: MultiOmicsData, setup: ConsortiumSetup) -> MultiOmicsData:
    """The site's data in the consortium's features, standardized; a consortium feature
    the site lacks is 0 (see :mod:`common.consortium_features`)."""
    from common.consortium_features import site_input

    return site_input(data, setup.schema, setup.standardizer).data


def site_model(setup: ConsortiumSetup, cfg: RunConfig, state: dict[str, Any] | None = None):
    from common.model import ModelSpec, build_model

    model = build_model(ModelSpec.for_schema(cfg.model, setup.schema))
    if state is not None:
        model.load_state_dict(state)
    return model


def initial_state(setup: ConsortiumSetup, cfg: RunConfig) -> dict[str, Any]:
    """A freshly initialized consortium model's weights: names, shapes, dtypes, order."""
    return site_model(setup, cfg).state_dict()


def train_round(
    site: Site,
    state: dict[str, Any],
    setup: ConsortiumSetup,
    rc: RoundConfig,
    cfg: RunConfig,
    *,
    privacy: SitePrivacy | None = None,
    run_id: str = "",
    config: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], SiteMetrics]:
    """Validate the received global weights, then train local epochs from them.

    ``config`` is the round's config record as received: under local DP, a request the
    site already answered in the same run (``run-key``) gets the same update again.

    Returns the new weights and the metrics: training loss and ``num_examples`` (training
    patients) plus the validation of the weights as received (see
    :func:`validation_metrics`). Under local DP (``privacy``), only values covered by the
    site's guarantee: ``num_examples`` is the site's noised patient count from the setup,
    with the privacy spent, and neither loss nor validation is sent. Raises
    ``client.dp.RoundRefused`` when the site's privacy budget does not allow the round.
    """
    from common.losses import ProximalTerm
    from common.optimization import make_optimizer
    from common.training import make_loader, seed_everything, select_device, train_epochs

    device = select_device(site.device or cfg.train.device)
    model = site_model(setup, cfg, state).to(device)
    seed_everything(cfg.seed * 1000 + rc.server_round)
    train = prepared(site.train, setup)
    loader = make_loader(train, cfg.train.batch_size, shuffle=True,
                         seed=cfg.seed * 1000 + rc.server_round)
    optimizer = make_optimizer(model, cfg.train)
    progress = (rc.progress_start, rc.progress_end)
    if privacy is not None:
        return _private_round(site, state, setup, model, loader, optimizer, cfg, rc, privacy,
                              config, progress=progress, run_id=run_id, device=device)
    metrics = validation_metrics(model, site, setup)
    proximal = ProximalTerm.snapshot(model, rc.proximal_mu) if rc.proximal_mu > 0 else None
    stats = train_epochs(
        model, loader, optimizer, cfg.train, epochs=rc.local_epochs,
        class_weight=setup.class_weight, progress=progress, proximal=proximal,
        device=device,
    )
    new_state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return new_state, replace(metrics, num_examples=site.train.n, train_loss=stats.loss)


def _private_round(site: Site, state: dict[str, Any], setup: ConsortiumSetup, model: Any,
                   loader: Any, optimizer: Any, cfg: RunConfig, rc: RoundConfig,
                   privacy: SitePrivacy, config: Mapping[str, Any] | None,
                   *, progress: tuple[float, float], run_id: str, device: Any
                   ) -> tuple[dict[str, Any], SiteMetrics]:
    """A local-DP round, or the update already released for this very request (a
    resumed coordinator asking again: see :mod:`client.privacy.replay`).

    The sampling rate and steps follow the site's noised patient count, and the budget
    keeps room for the noised validation counts of the final model (the round's noise
    plan), so that everything the site reports is covered by its guarantee.
    """
    import math

    import torch

    from client.distributed_round import FULL_BATCH
    from client.dp import train_private
    from client.privacy.replay import Released
    from client.privacy_guard import replayed
    from common.consortium_setup import noised_patients

    patients = noised_patients(setup, site.name)
    batches = max(1, math.ceil(patients / cfg.train.batch_size)) if cfg.train.batch_size else 1
    reserved = ([] if rc.noise_plan is None
                else [(rc.noise_plan.validation_noise, FULL_BATCH, 1)])

    def fresh() -> Released:
        stats, spent = train_private(
            model, loader, optimizer, cfg, privacy, epochs=rc.local_epochs,
            class_weight=setup.class_weight, progress=progress,
            rounds_left=max(1, cfg.rounds - rc.server_round + 1), run_id=run_id,
            server_round=rc.server_round, device=device, batches=batches, reserved=reserved,
            class_prior=setup.class_prior,
        )
        # The original module: Opacus' wrapper trains it in place but prefixes its keys.
        trained = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        return Released([v.numpy() for v in trained.values()],
                        {"names": list(trained), "train_loss": stats.loss,
                         NOISE_MULTIPLIER: spent[NOISE_MULTIPLIER], DELTA: spent[DELTA]})

    inputs = [v.detach().cpu().numpy() for v in state.values()]
    kept, _ = replayed(privacy, rc, config or {}, inputs, fresh)
    delta = float(kept.meta[DELTA])
    new_state = {k: torch.from_numpy(np.array(a)) for k, a in zip(kept.meta["names"],
                                                                   kept.arrays, strict=True)}
    return new_state, SiteMetrics(
        num_examples=max(1, round(patients)), epsilon=privacy.ledger.epsilon(delta),
        noise_multiplier=float(kept.meta[NOISE_MULTIPLIER]), delta=delta)


def evaluate_round(
    site: Site, state: dict[str, Any], setup: ConsortiumSetup, cfg: RunConfig
) -> SiteMetrics:
    """Validation metrics of the global weights (``num_examples`` = validation patients)."""
    return validation_metrics(site_model(setup, cfg, state), site, setup)


def validation_metrics(model: Any, site: Site, setup: ConsortiumSetup) -> SiteMetrics:
    """Loss sum and confusion counts on the site's validation split: aggregates only."""
    from common.losses import evaluation_loss
    from common.metrics import confusion_matrix
    from common.training import predict_proba

    val = prepared(site.val, setup)
    proba = predict_proba(model, val)
    assert val.labels is not None
    confusion = confusion_matrix(val.labels, proba.argmax(axis=1), setup.schema.n_classes)
    return SiteMetrics(
        num_examples=val.n, val_examples=val.n,
        val_loss_sum=evaluation_loss(proba, val.labels, setup.class_weight) * val.n,
        confusion=confusion,
    )
