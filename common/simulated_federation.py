"""A simulated federation: one dataset, its global test split and its virtual hospitals.

Built identically (and cached) in every process that needs it: the simulation runner,
the ServerApp (global test evaluation) and each ClientApp process (its own partition,
chosen by the ``partition-id`` in its node config). Deterministic from the run config.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path

import numpy as np

from common.config import RunConfig
from common.dataset import dataset_fingerprint, load_dataset, read_manifest, site_codes
from common.dataset.multiomics import MultiOmicsData
from common.partition import (
    FederationPlan,
    PartitionSpec,
    holdout_split,
    ids_digest,
    plan_federation,
)
from common.paths import resolve_data_dir

logger = logging.getLogger(__name__)

TEST_SPLIT = "test"


@dataclass(frozen=True)
class SplitSettings:
    """The run settings that shape a simulated federation (their values: ``RunConfig``)."""

    data: str
    test_data: str
    test_ids: str
    manifest: str
    partition: str
    sites: int
    min_site_size: int
    val_fraction: float
    test_fraction: float
    seed: int

    @classmethod
    def of(cls, cfg: RunConfig) -> SplitSettings:
        return cls(**{f.name: getattr(cfg, f.name) for f in fields(cls)})


@dataclass
class SimulatedFederation:
    pool: MultiOmicsData  # every patient a hospital may hold
    test: MultiOmicsData  # global test split: reporting only
    plan: FederationPlan
    test_source: str  # "held-out", "manifest split 'test'" or the --test-data directory
    fingerprints: dict[str, dict[str, str]]

    def site_data(self, index: int) -> tuple[str, MultiOmicsData, MultiOmicsData]:
        """``(name, train, val)`` of hospital ``index`` (raw, unstandardized)."""
        if not 0 <= index < len(self.plan.sites):
            raise ValueError(
                f"node partition-id {index} has no hospital: the {self.plan.partition} "
                f"partition has {len(self.plan.sites)} (set the number of SuperNodes to it)"
            )
        site = self.plan.sites[index]
        return site.name, self.pool.subset(site.train), self.pool.subset(site.val)

    def record(self) -> dict:
        """What config.json keeps about the split and data (counts and hashes, no ids)."""
        labels = self.pool.labels
        assert labels is not None
        return {
            "test_source": self.test_source,
            "n_pool": self.pool.n,
            "n_test": self.test.n,
            "test_ids_sha256": ids_digest(self.test.patient_ids),
            "sites": self.plan.record(labels, self.pool.schema.label_names),
            "dropped_sites": self.plan.dropped,
            "fingerprints": self.fingerprints,
            "data_origin": self.pool.origin_record() or self.test.origin_record(),
        }


def load_federation(cfg: RunConfig) -> SimulatedFederation:
    """Cached :func:`build_federation` of ``cfg``'s split settings."""
    return _cached(SplitSettings.of(cfg))


@lru_cache(maxsize=4)
def _cached(settings: SplitSettings) -> SimulatedFederation:
    return build_federation(settings)


def build_federation(settings: SplitSettings) -> SimulatedFederation:
    """Load ``settings.data`` and split it into a global test split and hospitals.

    The test split is, in order of preference: the patients listed in ``test_ids``
    (every split of ``data`` pooled); the ``test_data`` directory; the dataset's own
    ``test`` split when its manifest declares one (e.g. ROSMAP); a stratified
    ``test_fraction`` hold-out drawn with ``seed``.
    """
    data, test_data, manifest = settings.data, settings.test_data, settings.manifest
    seed, test_fraction = settings.seed, settings.test_fraction
    directory = resolve_data_dir(data)
    manifest_path = Path(manifest) if manifest else None
    man = read_manifest(directory, manifest_path)
    fingerprints = {str(directory): dataset_fingerprint(directory, manifest=manifest_path)}
    if settings.test_ids:
        full = load_dataset(directory, manifest=manifest_path)
        pool, test = split_by_ids(full, Path(settings.test_ids))
        source = f"patient ids in {settings.test_ids}"
    elif test_data:
        pool = load_dataset(directory, manifest=manifest_path)
        test_dir = resolve_data_dir(test_data)
        test = load_dataset(test_dir, schema=pool.schema)
        fingerprints[str(test_dir)] = dataset_fingerprint(test_dir)
        source = str(test_dir)
    elif TEST_SPLIT in man.splits:
        others = [s for s in man.splits if s != TEST_SPLIT]
        parts = [load_dataset(directory, split=s, manifest=manifest_path) for s in others]
        pool = parts[0] if len(parts) == 1 else concat_data(parts)
        test = load_dataset(directory, split=TEST_SPLIT, manifest=manifest_path,
                            schema=pool.schema)
        source = f"manifest split {TEST_SPLIT!r}"
    else:
        full = load_dataset(directory, manifest=manifest_path)
        assert full.labels is not None
        pool_idx, test_idx = holdout_split(full.labels, seed, test_fraction)
        pool, test = full.subset(pool_idx), full.subset(test_idx)
        source = f"held-out stratified {test_fraction:g} (seed {seed})"
    if pool.labels is None:
        raise ValueError(f"{directory}: training data needs labels")
    spec = PartitionSpec.parse(settings.partition)
    codes = None
    if spec.kind == "site":
        if not man.site_pattern:
            raise ValueError(
                f"{directory}: dataset {man.name!r} has no site codes in its patient ids, so "
                "the site partition is not possible; use --partition iid or dirichlet:ALPHA"
            )
        codes = site_codes(pool, man.site_pattern)
    plan = plan_federation(
        pool.labels, spec, seed=seed, n_sites=settings.sites or None, site_codes=codes,
        min_site_size=settings.min_site_size, val_fraction=settings.val_fraction,
    )
    logger.info("federation: %d hospitals from %s; test split %d patients (%s)",
                len(plan.sites), directory, test.n, source)
    return SimulatedFederation(pool, test, plan, source, fingerprints)


def split_by_ids(full: MultiOmicsData, ids_file: Path) -> tuple[MultiOmicsData, MultiOmicsData]:
    """``(pool, test)``: the patients listed in ``ids_file`` (one a line) are the test split."""
    wanted = {line.strip() for line in ids_file.read_text().splitlines() if line.strip()}
    is_test = np.isin(full.patient_ids.astype(str), sorted(wanted))
    unknown = len(wanted) - int(is_test.sum())
    if unknown or not wanted:
        raise ValueError(f"{ids_file}: {unknown} of {len(wanted)} test patient ids are not "
                         "in the data" if wanted else f"{ids_file}: lists no patient id")
    return full.subset(np.flatnonzero(~is_test)), full.subset(np.flatnonzero(is_test))


def concat_data(parts: list[MultiOmicsData]) -> MultiOmicsData:
    """The patients of several data sets with the same schema, in order."""
    first = parts[0]
    labels = [p.labels for p in parts]
    return MultiOmicsData(
        patient_ids=np.concatenate([p.patient_ids for p in parts]),
        features={m: np.concatenate([p.features[m] for p in parts]) for m in first.features},
        mask=np.concatenate([p.mask for p in parts]),
        labels=None if any(lab is None for lab in labels) else np.concatenate(labels),
        schema=first.schema,
        feature_mask=None if all(p.feature_mask is None for p in parts) else {
            m: np.concatenate([np.ones(p.features[m].shape, dtype=bool) if p.feature_mask is None
                               else p.feature_mask[m] for p in parts]) for m in first.features},
    )
