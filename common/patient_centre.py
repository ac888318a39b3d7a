"""The consortium's feature centre from a noised sum of per-patient unit vectors.

Private runs standardize every patient by its own values (no statistics of other
patients), which leaves each feature's typical level in every patient's input: a
constant offset that small DP-SGD models cannot learn past. Local DP-SGD therefore
releases, once, the sum over its patients of each one's standardized values as a vector
of norm at most 1 (:func:`unit_rows`), noised like any release; the coordinator divides
the consortium's sum by the noised patient total and turns it into the per-feature mean
the standardizer subtracts (:func:`centred_standardizer`).
"""

from __future__ import annotations

import numpy as np

from common.dataset.multiomics import MultiOmicsData
from common.preprocessing import Standardizer
from common.schema import FeatureSchema


def _scales(schema: FeatureSchema) -> dict[str, float]:
    """Per modality: the factor that gives a per-patient standardized block norm
    ``1 / sqrt(M)`` (each of its ``d`` features has mean 0 and variance 1)."""
    m = len(schema.modality_names)
    return {name: 1.0 / np.sqrt(max(1, len(schema.features(name))) * m)
            for name in schema.modality_names}


def unit_rows(data: MultiOmicsData) -> np.ndarray:
    """Every patient's standardized values as one row of L2 norm at most 1 (modalities
    in schema order, a missing modality 0)."""
    scales = _scales(data.schema)
    blocks = [np.where(data.mask[:, [j]], data.features[m] * scales[m], 0.0)
              for j, m in enumerate(data.schema.modality_names)]
    rows = np.concatenate(blocks, axis=1).astype(np.float64)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows * np.minimum(1.0, 1.0 / np.maximum(norms, 1e-12))


def centred_standardizer(schema: FeatureSchema, row_sum: np.ndarray, patients: float
                         ) -> Standardizer:
    """The per-patient standardizer that also subtracts the consortium's mean, from the
    (noised) sum of :func:`unit_rows` over ``patients`` patients."""
    scales = _scales(schema)
    centre = np.asarray(row_sum, dtype=np.float64) / max(patients, 1.0)
    mean, std, start = {}, {}, 0
    for m in schema.modality_names:
        d = len(schema.features(m))
        mean[m] = (centre[start:start + d] / scales[m]).astype(np.float32)
        std[m] = np.ones(d, dtype=np.float32)
        start += d
    if start != centre.size:
        raise ValueError(f"feature centre: {centre.size} values, the schema has {start} "
                         "features")
    return Standardizer(mean, std, per_patient=True)
