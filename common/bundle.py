"""Model bundle: a self-describing, versioned directory holding a trained model.

Layout (``BUNDLE_FORMAT`` version ``BUNDLE_VERSION``)::

    model/
      bundle.json        format, version, model config, label names, schema hash, lineage
      schema.json        FeatureSchema (modalities -> ordered feature names, label names)
      weights.pt         torch state_dict (loaded with weights_only=True)
      standardizer.npz   per-feature mean / std fit on training data

Everything inference needs is here: load it with :func:`load_bundle` and call
:meth:`ModelBundle.predict_proba` on raw (unstandardized) data in any modality subset.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from common.atomic import (
    fsync_directory,
    write_text_atomic,
    write_torch_atomic,
    write_with_atomic,
)
from common.config import ModelConfig
from common.dataset.multiomics import MultiOmicsData
from common.preprocessing import Standardizer
from common.schema import FeatureSchema

BUNDLE_FORMAT = "cancer-alpha-model"
BUNDLE_VERSION = 1


class BundleError(ValueError):
    """A model bundle is missing, incomplete or of an unsupported version."""


@dataclass
class ModelBundle:
    model_config: ModelConfig
    schema: FeatureSchema
    standardizer: Standardizer
    state_dict: dict[str, Any]
    lineage: dict[str, Any] = field(default_factory=dict)
    _model: Any = field(default=None, repr=False)

    def build_model(self) -> Any:
        """The network with the bundle's weights, in eval mode (built once)."""
        if self._model is None:
            from common.model import ModelSpec, build_model

            model = build_model(ModelSpec.for_schema(self.model_config, self.schema))
            model.load_state_dict(self.state_dict)
            model.eval()
            self._model = model
        return self._model

    def prepare(self, data: MultiOmicsData, source: str = "") -> MultiOmicsData:
        """Align raw data to the bundle's schema and standardize it."""
        return self.standardizer.transform(data.align_to(self.schema, source))

    def predict_proba(self, data: MultiOmicsData, source: str = "") -> np.ndarray:
        from common.training import predict_proba

        return predict_proba(self.build_model(), self.prepare(data, source))


def save_bundle(
    directory: Path,
    *,
    model_config: ModelConfig,
    schema: FeatureSchema,
    standardizer: Standardizer,
    state_dict: dict[str, Any],
    lineage: dict[str, Any],
) -> Path:
    """Write a bundle atomically: a complete new directory replaces the old one."""

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".bundle-", dir=directory.parent))
    tmp.chmod(0o755)  # mkdtemp creates 0700; a bundle is meant to be shared
    try:
        meta = {
            "format": BUNDLE_FORMAT,
            "version": BUNDLE_VERSION,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "model_config": model_config.to_dict(),
            "label_names": list(schema.label_names),
            "schema_sha256": schema.content_hash(),
            "lineage": lineage,
        }
        # Each file durable before the directory rename publishes them.
        write_text_atomic(tmp / "bundle.json", json.dumps(meta, indent=2, default=_jsonable))
        write_text_atomic(tmp / "schema.json", json.dumps(schema.to_dict(), indent=1))
        weights = {k: v.detach().cpu() for k, v in state_dict.items()}
        write_torch_atomic(tmp / "weights.pt", weights)
        arrays = standardizer.to_arrays()
        write_with_atomic(tmp / "standardizer.npz", lambda fh: np.savez(fh, **arrays))
        if directory.exists():
            old = directory.with_name(directory.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
        fsync_directory(directory.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def load_bundle(directory: Path | str) -> ModelBundle:
    """Read a bundle; accepts the bundle directory or a run directory containing ``model/``."""
    import torch

    directory = Path(directory)
    if not (directory / "bundle.json").exists() and (directory / "model" / "bundle.json").exists():
        directory = directory / "model"
    meta_path = directory / "bundle.json"
    if not meta_path.exists():
        raise BundleError(f"{directory}: no model bundle here (expected bundle.json, or a run "
                          "directory with model/bundle.json)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{meta_path}: not valid JSON ({exc})") from exc
    if meta.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{meta_path}: not a {BUNDLE_FORMAT} bundle")
    if meta.get("version") != BUNDLE_VERSION:
        raise BundleError(f"{meta_path}: bundle version {meta.get('version')} is not supported "
                          f"(this release reads version {BUNDLE_VERSION})")
    for name in ("schema.json", "weights.pt", "standardizer.npz"):
        if not (directory / name).exists():
            raise BundleError(f"{directory}: bundle is incomplete, {name} is missing")
    schema = FeatureSchema.from_dict(json.loads((directory / "schema.json").read_text()))
    if schema.content_hash() != meta.get("schema_sha256"):
        raise BundleError(f"{directory}: schema.json does not match the hash in bundle.json")
    with np.load(directory / "standardizer.npz") as npz:
        standardizer = Standardizer.from_arrays({k: npz[k] for k in npz.files})
    state = torch.load(directory / "weights.pt", map_location="cpu", weights_only=True)
    return ModelBundle(
        model_config=ModelConfig.from_dict(meta["model_config"]),
        schema=schema,
        standardizer=standardizer,
        state_dict=state,
        lineage=meta.get("lineage", {}),
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def write_json(path: Path, payload: Any) -> None:
    """Replace ``path`` atomically with ``payload`` as JSON (numpy values converted).

    Unlike ``write_json_atomic``, NaN stays allowed: run metrics hold it where a metric
    is undefined (e.g. an AUC over a single class).
    """
    write_text_atomic(path, json.dumps(payload, indent=2, default=_jsonable))
