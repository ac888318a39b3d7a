"""Feature schema: which modalities a model knows, their ordered features, and the labels."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any


class SchemaMismatchError(ValueError):
    """Data does not match the schema a model was trained on."""


@dataclass(frozen=True)
class FeatureSchema:
    """Modality name -> ordered feature names, plus the ordered label names.

    One schema travels with every model bundle; every loader checks incoming data
    against it (see :meth:`check_features`).
    """

    modalities: tuple[tuple[str, tuple[str, ...]], ...]
    label_names: tuple[str, ...]

    @classmethod
    def build(cls, modalities: dict[str, list[str]], label_names: list[str]) -> FeatureSchema:
        return cls(
            modalities=tuple((m, tuple(f)) for m, f in modalities.items()),
            label_names=tuple(label_names),
        )

    @property
    def modality_names(self) -> list[str]:
        return [m for m, _ in self.modalities]

    @property
    def n_classes(self) -> int:
        return len(self.label_names)

    def features(self, modality: str) -> tuple[str, ...]:
        for name, feats in self.modalities:
            if name == modality:
                return feats
        raise KeyError(f"unknown modality {modality!r}; the schema has {self.modality_names}")

    def feature_counts(self) -> dict[str, int]:
        return {m: len(f) for m, f in self.modalities}

    def to_dict(self) -> dict[str, Any]:
        return {
            "modalities": {m: list(f) for m, f in self.modalities},
            "label_names": list(self.label_names),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSchema:
        return cls.build(d["modalities"], d["label_names"])

    def content_hash(self) -> str:
        """SHA-256 of the canonical JSON form (modality order, feature order, labels)."""
        blob = json.dumps(self.to_dict(), sort_keys=False, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def check_features(self, modality: str, names: list[str], source: str = "") -> None:
        """Raise :class:`SchemaMismatchError` unless ``names`` equal this modality's features.

        Order does not matter (loaders reorder by name); missing or unexpected names do.
        """
        expected = self.features(modality)
        missing = [f for f in expected if f not in set(names)]
        extra = [f for f in names if f not in set(expected)]
        if missing or extra:
            where = f" in {source}" if source else ""
            parts = []
            if missing:
                parts.append(f"{len(missing)} missing (e.g. {_preview(missing)})")
            if extra:
                parts.append(f"{len(extra)} unexpected (e.g. {_preview(extra)})")
            raise SchemaMismatchError(
                f"modality {modality!r}{where}: feature names differ from the model's schema: "
                + "; ".join(parts)
            )


def _preview(items: list[str], k: int = 5) -> str:
    shown = ", ".join(repr(x) for x in items[:k])
    return shown + (", ..." if len(items) > k else "")
