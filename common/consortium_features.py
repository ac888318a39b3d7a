"""The consortium's feature set from the sites' declared names, and a site's data in it.

Rule (one place): per modality, when every site holding it declares the same feature
names, those names are the consortium's features (nothing to harmonize). Otherwise each
site's names are translated to canonical identifiers (:data:`CANONICAL_NAMESPACE`, with
the shipped gene id table: :func:`common.dataset.harmonization.canonical_names`) and a
canonical feature is kept when a majority of the sites holding the modality declare it
(:func:`common.dataset.harmonization.consortium_features`); rarer features are dropped.

Both ends translate with the same shipped table, so a site's reply carries only its
feature names, as before. A consortium feature a site lacks is masked at that site:
after standardization its value is exactly 0 (the consortium mean), the value a missing
modality has, and the data's per-patient feature mask marks it absent, so the model
adds its learned "absent" embedding rather than reading an average value
(:func:`common.model.split_mask`); a site holding none of a modality's consortium
features has that modality masked. Nothing is imputed from other sites.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from common.dataset.harmonization import (
    canonical_names,
    consortium_features,
    patient_feature_mask,
)
from common.dataset.multiomics import MultiOmicsData
from common.preprocessing import FeatureStats, Standardizer
from common.schema import FeatureSchema

logger = logging.getLogger(__name__)

CANONICAL_NAMESPACE = "symbol"
# Features whose pooled std is below this are centred but not scaled (as in preprocessing).
_MIN_STD = 1e-6


def declared_names(features: Sequence[str]) -> list[str]:
    """A site's feature names as canonical identifiers, one entry per column (two columns
    translating to the same identifier keep the first: see :func:`site_columns`)."""
    return canonical_names(list(features), CANONICAL_NAMESPACE)[0]


def consortium_modalities(schemas: Mapping[str, FeatureSchema]
                          ) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Modality -> consortium feature names, from each site's schema (site -> schema).

    Modality order: first appearance over the sites in the order given.
    """
    order: list[str] = []
    for schema in schemas.values():
        order += [m for m in schema.modality_names if m not in order]
    out = []
    for m in order:
        holders = {s: list(sc.features(m)) for s, sc in schemas.items()
                   if m in sc.modality_names}
        first = next(iter(holders.values()))
        if all(set(names) == set(first) for names in holders.values()):
            out.append((m, tuple(first)))
            continue
        declared = {s: {m: list(dict.fromkeys(declared_names(names)))}
                    for s, names in holders.items()}
        kept = consortium_features(declared).features(m)
        logger.info("modality %r: sites name features differently; %d canonical features "
                    "kept (declared by a majority of the %d sites holding it)",
                    m, len(kept), len(holders))
        out.append((m, kept))
    return tuple(out)


def site_columns(consortium: FeatureSchema, site: FeatureSchema) -> dict[str, np.ndarray]:
    """Per consortium modality: the site's column of each consortium feature, -1 where
    the site lacks it (or lacks the modality).

    A feature is found under the site's own name, else under its canonical identifier.
    """
    out = {}
    for m, feats in consortium.modalities:
        if m not in site.modality_names:
            out[m] = np.full(len(feats), -1, dtype=np.int64)
            continue
        own = list(site.features(m))
        pos = {f: j for j, f in enumerate(own)}
        if not set(feats) <= set(own):
            for j, f in enumerate(declared_names(own)):
                pos.setdefault(f, j)
        out[m] = np.array([pos.get(f, -1) for f in feats], dtype=np.int64)
    return out


def coverage(columns: Mapping[str, np.ndarray]) -> dict[str, dict[str, int]]:
    """Per modality: consortium features, and how many of them the site has."""
    return {m: {"features": len(idx), "present": int((idx >= 0).sum())}
            for m, idx in columns.items()}


def pooled_standardizer(consortium: FeatureSchema,
                        parts: Sequence[tuple[FeatureSchema, FeatureStats]]) -> Standardizer:
    """Mean and std per consortium feature from each site's statistics (in the site's own
    feature order); a site lacking a feature adds no patient to it."""
    mean, std = {}, {}
    for m, feats in consortium.modalities:
        n = np.zeros(len(feats))
        total, total_sq = np.zeros(len(feats)), np.zeros(len(feats))
        for schema, stats in parts:
            if m not in stats.count:
                continue
            idx = site_columns(consortium, schema)[m]
            have = idx >= 0
            n[have] += stats.count[m]
            total[have] += np.asarray(stats.total[m], dtype=np.float64)[idx[have]]
            total_sq[have] += np.asarray(stats.total_sq[m], dtype=np.float64)[idx[have]]
        mu = total / np.maximum(n, 1)
        sd = np.sqrt(np.maximum(total_sq / np.maximum(n, 1) - mu**2, 0.0))
        mean[m] = mu.astype(np.float32)
        std[m] = np.where((sd < _MIN_STD) | (n == 0), 1.0, sd).astype(np.float32)
    return Standardizer(mean, std)


@dataclass
class SiteInput:
    """A site's data in the consortium schema, standardized; ``feature_mask[m]`` bool
    [F_m] is False for the consortium features the site lacks (their values are 0)."""

    data: MultiOmicsData
    feature_mask: dict[str, np.ndarray]


def site_input(data: MultiOmicsData, schema: FeatureSchema,
               standardizer: Standardizer) -> SiteInput:
    """``data`` expressed in the consortium ``schema`` and standardized.

    Per-patient standardization uses only the features the site has; features it lacks
    are set to 0 after standardization, and a modality with none of its consortium
    features is masked.
    """
    columns = site_columns(schema, data.schema)
    if data.labels is not None and tuple(data.schema.label_names) != tuple(schema.label_names):
        data = data.align_to(FeatureSchema(data.schema.modalities, schema.label_names))
    n = data.n
    features, masks = {}, {}
    mask = np.zeros((n, len(schema.modality_names)), dtype=bool)
    for j, m in enumerate(schema.modality_names):
        idx = columns[m]
        have = idx >= 0
        dtype = data.features[m].dtype if m in data.modality_names else np.float32
        x = np.zeros((n, len(idx)), dtype=dtype)
        if have.any():
            x[:, have] = data.features[m][:, idx[have]]
            mask[:, j] = data.mask[:, data.modality_names.index(m)]
        if standardizer.per_patient and have.any():
            x = x.astype(np.float64)
            part = x[:, have]
            mu = part.mean(axis=1, keepdims=True)
            sd = part.std(axis=1, keepdims=True)
            x = (x - mu) / np.where(sd < _MIN_STD, 1.0, sd)
        z = ((x - standardizer.mean[m]) / standardizer.std[m]).astype(np.float32)
        z[:, ~have] = 0.0
        z[~mask[:, j]] = 0.0
        features[m], masks[m] = z, have
    out = MultiOmicsData(data.patient_ids, features, mask, data.labels, schema, data.origin,
                         patient_feature_mask(n, masks))
    return SiteInput(out, masks)
