"""Per-feature standardization fit from mergeable sufficient statistics.

A site never shares feature values: it shares, per modality, the count of patients
with that modality and the per-feature sum and sum of squares over them. Sums from
all sites add up to the pooled statistics, so the server obtains exactly the mean and
standard deviation that pooled training data would give, without seeing a value.
A site refuses to report statistics over fewer than ``MIN_PATIENTS_FOR_STATS`` patients.

Private runs need no statistics at all: :meth:`Standardizer.for_each_patient` standardizes each
patient's features of a modality by that patient's own mean and standard deviation, so
nothing about other patients enters a patient's input.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.dataset.multiomics import MultiOmicsData
from common.schema import FeatureSchema

MIN_PATIENTS_FOR_STATS = 5
# Features whose pooled std is below this are centred but not scaled (constant at a site).
_MIN_STD = 1e-6


@dataclass
class FeatureStats:
    """Per-modality sufficient statistics: patient count, sum and sum of squares."""

    count: dict[str, int]
    total: dict[str, np.ndarray]
    total_sq: dict[str, np.ndarray]

    @classmethod
    def of(cls, data: MultiOmicsData) -> FeatureStats:
        count, total, total_sq = {}, {}, {}
        for j, m in enumerate(data.modality_names):
            rows = data.features[m][data.mask[:, j]].astype(np.float64)
            count[m] = int(rows.shape[0])
            total[m] = rows.sum(axis=0)
            total_sq[m] = (rows**2).sum(axis=0)
        return cls(count, total, total_sq)

    def shareable(self, min_patients: int = MIN_PATIENTS_FOR_STATS) -> FeatureStats:
        """Statistics with every modality held by fewer than ``min_patients`` withheld."""
        keep = [m for m, c in self.count.items() if c >= min_patients]
        return FeatureStats(
            {m: self.count[m] for m in keep},
            {m: self.total[m] for m in keep},
            {m: self.total_sq[m] for m in keep},
        )

    @staticmethod
    def merge(parts: list[FeatureStats]) -> FeatureStats:
        count: dict[str, int] = {}
        total: dict[str, np.ndarray] = {}
        total_sq: dict[str, np.ndarray] = {}
        for p in parts:
            for m, c in p.count.items():
                count[m] = count.get(m, 0) + c
                total[m] = total.get(m, 0.0) + p.total[m]
                total_sq[m] = total_sq.get(m, 0.0) + p.total_sq[m]
        return FeatureStats(count, total, total_sq)


# Array key marking a per-patient standardizer in bundles, checkpoints and setups.
_PER_PATIENT = "per-patient"


@dataclass
class Standardizer:
    """``(x - mean) / std`` per feature; stored in the model bundle.

    With ``per_patient``, each patient's values of a modality are first centred and
    scaled by that patient's own mean and standard deviation over the modality's features
    (``mean`` 0 and ``std`` 1 then leave them as they are).
    """

    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]
    per_patient: bool = False

    @classmethod
    def for_each_patient(cls, schema: FeatureSchema) -> Standardizer:
        """The standardizer that uses no statistics of other patients (private runs)."""
        mean = {m: np.zeros(len(schema.features(m)), dtype=np.float32)
                for m in schema.modality_names}
        std = {m: np.ones(len(schema.features(m)), dtype=np.float32)
               for m in schema.modality_names}
        return cls(mean, std, per_patient=True)

    @classmethod
    def from_stats(cls, stats: FeatureStats, schema: FeatureSchema) -> Standardizer:
        mean, std = {}, {}
        for m in schema.modality_names:
            n_feat = len(schema.features(m))
            c = stats.count.get(m, 0)
            if c == 0:  # no site reported this modality: identity transform
                mean[m] = np.zeros(n_feat, dtype=np.float32)
                std[m] = np.ones(n_feat, dtype=np.float32)
                continue
            mu = stats.total[m] / c
            var = np.maximum(stats.total_sq[m] / c - mu**2, 0.0)
            sd = np.sqrt(var)
            mean[m] = mu.astype(np.float32)
            std[m] = np.where(sd < _MIN_STD, 1.0, sd).astype(np.float32)
        return cls(mean, std)

    @classmethod
    def fit(cls, data: MultiOmicsData) -> Standardizer:
        return cls.from_stats(FeatureStats.of(data), data.schema)

    def transform(self, data: MultiOmicsData) -> MultiOmicsData:
        """Standardized copy; masked-out rows stay exactly zero (the mean)."""
        feats = {}
        for j, m in enumerate(data.modality_names):
            x = data.features[m]
            if self.per_patient:
                x = _per_patient(x, None if data.feature_mask is None
                                 else data.feature_mask[m])
            z = (x - self.mean[m]) / self.std[m]
            z[~data.mask[:, j]] = 0.0
            if data.feature_mask is not None:
                z[~data.feature_mask[m]] = 0.0  # a feature not measured stays masked, not imputed
            feats[m] = z.astype(np.float32)
        return MultiOmicsData(
            data.patient_ids, feats, data.mask, data.labels, data.schema, data.origin,
            data.feature_mask,
        )

    def to_arrays(self) -> dict[str, np.ndarray]:
        out = {f"mean/{m}": v for m, v in self.mean.items()}
        out.update({f"std/{m}": v for m, v in self.std.items()})
        if self.per_patient:
            out[_PER_PATIENT] = np.ones(1, dtype=np.float32)
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Standardizer:
        mean = {
            k.split("/", 1)[1]: np.asarray(v) for k, v in arrays.items() if k.startswith("mean/")
        }
        std = {k.split("/", 1)[1]: np.asarray(v) for k, v in arrays.items() if k.startswith("std/")}
        return cls(mean, std, per_patient=_PER_PATIENT in arrays)


def _per_patient(x: np.ndarray, present: np.ndarray | None = None) -> np.ndarray:
    """Each row centred and scaled by its own mean and standard deviation, over the
    features ``present`` in it (all when None; absent ones are left out, whatever their
    value, and come out 0)."""
    x = np.asarray(x, dtype=np.float64)
    if present is None:
        mu = x.mean(axis=1, keepdims=True)
        sd = x.std(axis=1, keepdims=True)
        return (x - mu) / np.where(sd < _MIN_STD, 1.0, sd)
    w = np.asarray(present, dtype=bool)
    x = np.where(w, x, 0.0)
    count = np.maximum(w.sum(axis=1, keepdims=True), 1)
    mu = x.sum(axis=1, keepdims=True) / count
    sd = np.sqrt((np.where(w, x - mu, 0.0) ** 2).sum(axis=1, keepdims=True) / count)
    return np.where(w, (x - mu) / np.where(sd < _MIN_STD, 1.0, sd), 0.0)
