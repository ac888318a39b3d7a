"""Forming the consortium: the sites describe themselves, the coordinator merges the
descriptions into one :class:`~common.consortium_setup.ConsortiumSetup` and sends it to
every site once per run."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

import numpy as np
from flwr.app import ConfigRecord, RecordDict
from flwr.serverapp import Grid

from common.config import RunConfig
from common.consortium_setup import ConsortiumSetup, setup_digest_of
from common.distributed_dp import NoisePlan
from common.preprocessing import FeatureStats, Standardizer
from common.protocol import CONFIG, DESCRIBE, QUERY_KIND, SiteDescription
from common.schema import FeatureSchema, SchemaMismatchError
from common.spend_record import with_account
from server.rounds.exchange import query, wait_for_sites
from server.rounds.outcome import FederationError, FederationOutcome

logger = logging.getLogger(__name__)

# Adds the run's key and the sites' earlier spend to a release's config.
Accounted = Callable[[ConfigRecord], ConfigRecord]


def _unaccounted(config: ConfigRecord) -> ConfigRecord:
    return config


def describe_sites(grid: Grid, nodes: list[int], timeout: float, *, attempts: int = 2
                   ) -> dict[int, SiteDescription]:
    """Every answering site's description, by node. A site that fails or does not answer
    is asked once more (a worker may still be starting); one that fails again is logged
    and left out."""
    out: dict[int, SiteDescription] = {}
    pending = list(nodes)
    for _ in range(attempts):
        replies, _ = query(grid, pending, RecordDict({CONFIG: ConfigRecord(
            {QUERY_KIND: DESCRIBE})}), timeout)
        for reply in replies:
            if reply.has_error():
                logger.warning("site on node %s could not describe itself: %s",
                               reply.metadata.src_node_id, reply.error.reason)
                continue
            out[reply.metadata.src_node_id] = SiteDescription.from_record(reply.content)
        pending = [n for n in pending if n not in out]
        if not pending:
            break
    return out


def consortium_schema(descriptions: list[SiteDescription]) -> FeatureSchema:
    """Union of the sites' modalities, each in the consortium's features.

    A site may lack a whole modality (it trains with that modality masked) or some of a
    modality's features (masked at that site): the rule is
    :func:`common.consortium_features.consortium_modalities`. All sites must have the
    same class names.
    """
    from common.consortium_features import consortium_modalities

    labels = descriptions[0].schema.label_names
    for d in descriptions:
        if d.schema.label_names != labels:
            raise SchemaMismatchError(
                f"site {d.site!r} has classes {list(d.schema.label_names)}, site "
                f"{descriptions[0].site!r} has {list(labels)}; give every site the same "
                "label_names in its dataset.toml"
            )
    try:
        # Keyed by name and position: two sites must not collapse into one.
        modalities = consortium_modalities({f"{d.site}\t{i:06d}": d.schema
                                            for i, d in enumerate(descriptions)})
    except ValueError as exc:
        raise SchemaMismatchError(str(exc)) from exc
    return FeatureSchema(modalities, labels)


def feature_coverage(schema: FeatureSchema, d: SiteDescription) -> dict:
    """Per modality: the consortium's features and how many this site has (from names)."""
    from common.consortium_features import coverage, site_columns

    return coverage(site_columns(schema, d.schema))


def site_summary(schema: FeatureSchema, d: SiteDescription) -> dict:
    """A site's entry in the run's record: name, patients, class counts, feature coverage
    (name and coverage only when the site withholds its counts)."""
    if d.private:
        return {"site": d.site, "features": feature_coverage(schema, d)}
    return {"site": d.site, "n_train": d.n_train, "n_val": d.n_val,
            "class_counts": {n: int(c) for n, c in zip(schema.label_names, d.class_counts,
                                                       strict=True)},
            "features": feature_coverage(schema, d)}


def merge_descriptions(descriptions: list[SiteDescription], class_weighting: str
                       ) -> tuple[ConsortiumSetup, list[dict]]:
    """The consortium setup and the per-site summary (name, patients, class counts,
    feature coverage)."""
    from common.consortium_features import pooled_standardizer
    from common.losses import class_weights

    schema = consortium_schema(descriptions)
    if all(d.schema.modalities == schema.modalities for d in descriptions):
        standardizer = Standardizer.from_stats(
            FeatureStats.merge([d.stats for d in descriptions]), schema)
    else:
        standardizer = pooled_standardizer(schema, [(d.schema, d.stats) for d in descriptions])
    counts = np.sum([d.class_counts for d in descriptions], axis=0)
    setup = ConsortiumSetup(schema, standardizer, class_weights(counts, class_weighting))
    sites = [site_summary(schema, d) for d in descriptions]
    logger.info("%d sites, %d training patients; classes %s", len(sites), int(counts.sum()),
                dict(zip(schema.label_names, counts.tolist(), strict=True)))
    return setup, sites


def form_consortium(grid: Grid, cfg: RunConfig, timeout: float, *, run_key: str = "",
                    spend: Mapping[str, float] | None = None) -> FederationOutcome:
    """Ask the connected sites to describe themselves and merge what they answer; the
    sites that answered are the run's members.

    The noised releases of a private set-up carry the run's key and each site's epsilon
    from earlier runs (``spend``, :mod:`common.spend_record`), as every round does: a
    site whose ledger shows less refuses before it releases anything.
    """
    def account(config: ConfigRecord) -> ConfigRecord:
        return with_account(config, run_key, dict(spend or {})) if run_key else config

    nodes = wait_for_sites(grid, cfg.min_sites, timeout)
    described = describe_sites(grid, nodes, timeout)
    if len(described) < cfg.min_sites:
        raise FederationError(f"{len(described)} sites answered, {cfg.min_sites} required")
    descriptions = list(described.values())
    if cfg.dp == "distributed":
        outcome = _private_consortium(grid, cfg, sorted(described), descriptions, timeout,
                                      account)
    elif cfg.dp == "local":
        outcome, described = _locally_private_consortium(grid, cfg, described, timeout,
                                                         account)
    else:
        outcome = FederationOutcome(*merge_descriptions(descriptions,
                                                        cfg.train.class_weighting))
    outcome.members = {node: d.site for node, d in described.items()}
    if run_key:
        outcome.run_key = run_key
    return outcome



def _locally_private_consortium(grid: Grid, cfg: RunConfig,
                                described: dict[int, SiteDescription], timeout: float,
                                account: Accounted = _unaccounted
                                ) -> tuple[FederationOutcome, dict[int, SiteDescription]]:
    """Local DP: names only from the descriptions; every site's class counts noised by
    the site alone (:mod:`server.rounds.local_dp`); every patient standardized by its own
    values. The members are the sites that released their counts."""
    from common.centroid import CENTROID_KIND
    from common.losses import class_weights
    from server.rounds.distributed import class_prior
    from server.rounds.local_dp import local_noise_plan, noised_class_counts, values_of_units

    _check_private(list(described.values()), "local")
    schema = consortium_schema(list(described.values()))
    plan = local_noise_plan(cfg)
    released = noised_class_counts(grid, sorted(described), plan, schema.n_classes, timeout,
                                   account)
    members = {node: d for node, d in described.items() if node in released.vectors}
    total = released.total()
    if len(members) < cfg.min_sites or total is None:
        reasons = "; ".join(f"{r['site']}: {r['reason']}" for r in released.failed)
        raise FederationError(f"class counts: {len(members)} sites released them, "
                              f"{cfg.min_sites} required" + (f" ({reasons})" if reasons else ""))
    counts = values_of_units(total[0])
    prior, patients = class_prior(counts)
    site_patients = {members[node].site: max(1.0, float(np.sum(values_of_units(vector[0]))))
                     for node, vector in released.vectors.items()}
    setup = ConsortiumSetup(schema, Standardizer.for_each_patient(schema),
                            class_weights(np.maximum(counts, 1.0), cfg.train.class_weighting),
                            prior, site_patients)
    if cfg.model.kind != CENTROID_KIND:  # DP-SGD: inputs centred by a noised mean
        setup = _centred(grid, setup, plan, sorted(members), patients, timeout, account)
    logger.info("%d sites; noised class counts %s", len(members),
                dict(zip(schema.label_names, np.round(counts, 1).tolist(), strict=True)))
    record = {"noise_plan": plan.to_dict(), "class_counts": [float(c) for c in counts],
              "patients": patients, "site_patients": site_patients}
    # The class-centroid model is fit from noised sums, as under distributed DP, which
    # the coordinator adds up itself (server.rounds.local_dp).
    released_sums = dict(record) if cfg.model.kind == CENTROID_KIND else None
    return FederationOutcome(setup, [site_summary(schema, d) for d in members.values()],
                             local_dp=record, distributed_dp=released_sums), members


def _centred(grid: Grid, setup: ConsortiumSetup, plan: NoisePlan, nodes: list[int],
             patients: float, timeout: float, account: Accounted = _unaccounted
             ) -> ConsortiumSetup:
    """``setup`` with the consortium's feature centre from the sites' noised sums of
    their patients' unit vectors (:mod:`common.patient_centre`); the sites hold ``setup``
    for that release."""
    from dataclasses import replace

    from flwr.app import ArrayRecord

    from common.patient_centre import centred_standardizer
    from common.protocol import CENTRE_TASK, RoundConfig, to_array
    from server.rounds.local_dp import request_releases, values_of_units

    stored = send_setup(grid, nodes, setup, timeout)
    features = sum(setup.schema.feature_counts().values())
    config = account(RoundConfig(setup.digest(), task=CENTRE_TASK,
                                 noise_plan=plan).to_record())
    released = request_releases(grid, sorted(stored), ArrayRecord(
        {CENTRE_TASK: to_array(np.zeros(features))}), config, timeout)
    total = released.total()
    if total is None:
        raise FederationError("feature centre: no site released its sum")
    standardizer = centred_standardizer(setup.schema, values_of_units(total[0]),
                                        patients)
    logger.info("feature centre from %d sites' noised sums", len(released.vectors))
    return replace(setup, standardizer=standardizer)


def _check_private(descriptions: list[SiteDescription], mode: str) -> None:
    disclosed = [d.site for d in descriptions if not d.private]
    if disclosed:
        raise FederationError(f"{mode} DP: site(s) {disclosed} sent their counts and "
                              "statistics in clear; they must run the same DP mode")


def _private_consortium(grid: Grid, cfg: RunConfig, nodes: list[int],
                        descriptions: list[SiteDescription], timeout: float,
                        account: Accounted = _unaccounted) -> FederationOutcome:
    """Distributed DP: names only from the descriptions; the class counts as one noised
    sum through SecAgg+; every patient standardized by its own values."""
    from flwr.app import ArrayRecord

    from common.protocol import CLASS_COUNTS_TASK, RoundConfig, to_array
    from server.rounds.distributed import (
        class_prior,
        noise_plan_for,
        secagg_settings,
        summed,
        too_few_sites,
    )
    from server.secagg import secure_train_round

    _check_private(descriptions, "distributed")
    if len(descriptions) < 3:
        raise FederationError(f"distributed DP sums through secure aggregation, which needs "
                              f"at least 3 sites; {len(descriptions)} joined (use --dp local)")
    schema = consortium_schema(descriptions)
    plan = noise_plan_for(cfg, len(descriptions))
    n_classes = schema.n_classes
    config = account(RoundConfig(task=CLASS_COUNTS_TASK, noise_plan=plan).to_record())
    secure = secure_train_round(
        grid, 0, ArrayRecord({CLASS_COUNTS_TASK: to_array(np.zeros(n_classes))}),
        sorted(nodes), config, max_weight=1,
        settings=secagg_settings(timeout, plan))
    problem = too_few_sites(secure, plan)
    counts = summed(secure, 1.0)
    if problem is not None or counts is None:
        reasons = "; ".join(f"{r['site']}: {r['reason']}" for r in secure.rejected)
        raise FederationError(f"class counts: {problem or 'no sum'}"
                              + (f" ({reasons})" if reasons else ""))
    prior, patients = class_prior(counts[0])
    setup = ConsortiumSetup(schema, Standardizer.for_each_patient(schema),
                            np.ones(n_classes, dtype=np.float32), prior)
    logger.info("%d sites; noised class counts %s", len(descriptions),
                dict(zip(schema.label_names, np.round(counts[0], 1).tolist(), strict=True)))
    return FederationOutcome(setup, [site_summary(schema, d) for d in descriptions],
                             distributed_dp={"noise_plan": plan.to_dict(),
                                             "class_counts": [float(c) for c in counts[0]],
                                             "patients": patients})


SETUP_ATTEMPTS = 3
# How long a failed setup waits for its node to be listed as connected before giving
# up until the next round (a node that is really gone must not hold the round).
RECONNECT_WAIT = 15.0


def send_setup(grid: Grid, nodes: list[int], setup: ConsortiumSetup, timeout: float,
               *, attempts: int = SETUP_ATTEMPTS) -> set[int]:
    """Send ``setup`` to ``nodes``; the nodes that stored it (a site that fails here
    gets it again when a round finds it missing).

    A SuperNode that has just restarted can fetch a round's message before the SuperLink
    counts it as online again, so its setup query is answered "node unavailable": such
    nodes are asked again once they are listed as connected, a few times within
    ``timeout``.
    """
    stored, digest = set(), setup.digest()
    deadline = time.monotonic() + timeout
    pending = list(nodes)
    for attempt in range(attempts):
        replies, lost = query(grid, pending, setup.to_message_content(),
                              max(deadline - time.monotonic(), 1.0))
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                logger.warning("site on node %s did not store the consortium setup: %s", node,
                               reply.error.reason)
            elif setup_digest_of(reply.content) != digest:
                logger.warning("site on node %s stored setup %s, not %s", node,
                               setup_digest_of(reply.content), digest)
            else:
                stored.add(node)
        if lost:
            logger.warning("node(s) %s did not acknowledge the consortium setup", sorted(lost))
        pending = [n for n in pending if n not in stored]
        if not pending or attempt == attempts - 1 or not _reconnected(grid, pending, deadline):
            break
    return stored


def _reconnected(grid: Grid, nodes: list[int], deadline: float) -> bool:
    """Wait (at most :data:`RECONNECT_WAIT`, never past ``deadline``) for any of
    ``nodes`` to be listed as connected."""
    time.sleep(1.0)
    until = min(deadline, time.monotonic() + RECONNECT_WAIT)
    while time.monotonic() < until:
        if set(nodes) & set(grid.get_node_ids()):
            return True
        time.sleep(1.0)
    return False
