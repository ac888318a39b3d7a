"""In-memory multi-omics data: per-modality matrices, a modality mask, an optional
per-feature presence mask, labels, origin."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from common.schema import FeatureSchema, SchemaMismatchError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetOrigin:
    """Where loaded data came from and which manifest described its layout.

    ``manifest_source`` is ``"alias:<name>"`` or ``"fingerprint:<name>"`` for a shipped
    manifest, ``"dataset.toml"``, ``"--manifest <path>"`` or ``"convention"``;
    ``manifest_sha256`` is the manifest file's hash (None for the convention).
    """

    directory: str
    manifest_source: str
    manifest_sha256: str | None = None
    # Per modality, what QC did (common.dataset.qc.QcRecord.record()); JSON-ready.
    preprocessing: dict[str, dict] | None = field(default=None, compare=False, hash=False)

    def record(self) -> dict:
        """The JSON form kept in a run's config.json."""
        out: dict = {
            "directory": self.directory,
            "manifest_source": self.manifest_source,
            "manifest_sha256": self.manifest_sha256,
        }
        if self.preprocessing:
            out["preprocessing"] = self.preprocessing
        return out


@dataclass
class MultiOmicsData:
    """Patients x modalities, aligned to one :class:`FeatureSchema`.

    ``features[m]`` is ``float32 [n, F_m]`` in schema feature order; rows of patients
    who lack modality ``m`` are zeros and ``mask[:, j]`` is False for them.
    ``labels`` is ``int64 [n]`` (indices into ``schema.label_names``) or None for
    unlabelled data (prediction). ``origin`` is set by the dataset loader and kept by
    :meth:`subset` and :meth:`align_to`.

    ``feature_mask`` (None = every feature measured) is, per modality, ``bool [n, F_m]``:
    False where the patient's site does not measure the feature (its value is 0 after
    standardization, never imputed); :meth:`model_mask` hands it to the model.
    """

    patient_ids: np.ndarray
    features: dict[str, np.ndarray]
    mask: np.ndarray
    labels: np.ndarray | None
    schema: FeatureSchema
    origin: DatasetOrigin | None = None
    feature_mask: dict[str, np.ndarray] | None = None

    def __post_init__(self) -> None:
        n = len(self.patient_ids)
        names = self.schema.modality_names
        if list(self.features) != names:
            raise ValueError(f"features keys {list(self.features)} != schema modalities {names}")
        for m, x in self.features.items():
            if x.shape != (n, len(self.schema.features(m))):
                raise ValueError(f"modality {m!r}: array shape {x.shape} does not fit schema")
        if self.mask.shape != (n, len(names)):
            raise ValueError(f"mask shape {self.mask.shape} != ({n}, {len(names)})")
        if self.labels is not None and self.labels.shape != (n,):
            raise ValueError(f"labels shape {self.labels.shape} != ({n},)")
        if self.feature_mask is not None:
            if list(self.feature_mask) != names:
                raise ValueError(f"feature_mask keys {list(self.feature_mask)} != schema "
                                 f"modalities {names}")
            for m, have in self.feature_mask.items():
                if have.shape != self.features[m].shape or have.dtype != bool:
                    raise ValueError(f"modality {m!r}: feature mask {have.dtype} {have.shape} "
                                     f"does not fit its features {self.features[m].shape}")

    @property
    def n(self) -> int:
        return len(self.patient_ids)

    @property
    def modality_names(self) -> list[str]:
        return self.schema.modality_names

    def origin_record(self) -> dict[str, str | None] | None:
        """:meth:`DatasetOrigin.record` of this data's origin, or None when unknown."""
        return None if self.origin is None else self.origin.record()

    def model_mask(self) -> np.ndarray:
        """``float32 [n, M]``: the modality mask; when some feature is not measured,
        followed by the per-feature presence mask ``[n, sum F_m]``
        (:func:`common.model.split_mask`)."""
        mask = self.mask.astype(np.float32)
        if self.feature_mask is None or all(v.all() for v in self.feature_mask.values()):
            return mask
        have = np.concatenate([self.feature_mask[m] for m in self.modality_names], axis=1)
        return np.concatenate([mask, have.astype(np.float32)], axis=1)

    def present_modalities(self) -> list[str]:
        """Modalities that at least one patient has."""
        return [m for j, m in enumerate(self.modality_names) if self.mask[:, j].any()]

    def subset(self, idx: np.ndarray | list[int]) -> MultiOmicsData:
        idx = np.asarray(idx, dtype=np.int64)
        return MultiOmicsData(
            patient_ids=self.patient_ids[idx],
            features={m: x[idx] for m, x in self.features.items()},
            mask=self.mask[idx],
            labels=None if self.labels is None else self.labels[idx],
            schema=self.schema,
            origin=self.origin,
            feature_mask=None if self.feature_mask is None
            else {m: v[idx] for m, v in self.feature_mask.items()},
        )

    def copy(self) -> MultiOmicsData:
        """The same data in freshly allocated (writable) arrays."""
        return MultiOmicsData(
            patient_ids=self.patient_ids.copy(),
            features={m: x.copy() for m, x in self.features.items()},
            mask=self.mask.copy(),
            labels=None if self.labels is None else self.labels.copy(),
            schema=self.schema,
            origin=self.origin,
            feature_mask=None if self.feature_mask is None
            else {m: v.copy() for m, v in self.feature_mask.items()},
        )

    def concat(self) -> np.ndarray:
        """All modalities side by side, ``float32 [n, sum F_m]`` (for classical baselines)."""
        return np.concatenate([self.features[m] for m in self.modality_names], axis=1)

    def class_counts(self) -> np.ndarray:
        if self.labels is None:
            raise ValueError("unlabelled data has no class counts")
        return np.bincount(self.labels, minlength=self.schema.n_classes)

    def align_to(self, schema: FeatureSchema, source: str = "") -> MultiOmicsData:
        """Re-express this data in another schema (a trained model's).

        Features are reordered by name; a modality the data lacks becomes an all-masked
        block (warning, not error); a modality the model does not know is dropped with a
        warning; differing feature names or label names raise :class:`SchemaMismatchError`.
        """
        if schema == self.schema:
            return self
        n = self.n
        features: dict[str, np.ndarray] = {}
        have: dict[str, np.ndarray] = {}
        mask = np.zeros((n, len(schema.modality_names)), dtype=bool)
        for j, m in enumerate(schema.modality_names):
            if m not in self.modality_names:
                logger.warning(
                    "%smodality %r is absent: the model will predict without it",
                    f"{source}: " if source else "",
                    m,
                )
                features[m] = np.zeros((n, len(schema.features(m))), dtype=np.float32)
                if self.feature_mask is not None:
                    have[m] = np.ones(features[m].shape, dtype=bool)
                continue
            mine = list(self.schema.features(m))
            schema.check_features(m, mine, source)
            pos = {f: i for i, f in enumerate(mine)}
            order = [pos[f] for f in schema.features(m)]
            features[m] = self.features[m][:, order]
            if self.feature_mask is not None:
                have[m] = self.feature_mask[m][:, order]
            mask[:, j] = self.mask[:, self.modality_names.index(m)]
        extra = [m for m in self.modality_names if m not in schema.modality_names]
        if extra:
            logger.warning(
                "%smodalities %s are unknown to the model and are ignored",
                f"{source}: " if source else "",
                extra,
            )
        labels = None
        if self.labels is not None:
            labels = _relabel(self.labels, self.schema.label_names, schema.label_names, source)
        return MultiOmicsData(self.patient_ids, features, mask, labels, schema, self.origin,
                              None if self.feature_mask is None else have)


def _relabel(
    labels: np.ndarray, old: tuple[str, ...], new: tuple[str, ...], source: str
) -> np.ndarray:
    if old == new:
        return labels
    index = {name: i for i, name in enumerate(new)}
    unknown = sorted({old[k] for k in np.unique(labels)} - set(index))
    if unknown:
        raise SchemaMismatchError(
            f"{source + ': ' if source else ''}labels {unknown} are not among the model's "
            f"classes {list(new)}"
        )
    lut = np.array([index.get(name, -1) for name in old], dtype=np.int64)
    return lut[labels]
