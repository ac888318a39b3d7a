"""The model one serving process answers with: loaded from the registry or a bundle
directory, and warmed up before the first request."""

from __future__ import annotations

import numpy as np

from server.serving.predictor import Predictor, ServedModel
from server.serving.registry import (
    Registry,
    bundle_digest,
    bundle_dir_of,
    is_registry_ref,
    verify_bundle,
)
from server.serving.settings import ServingSettings


def load_predictor(settings: ServingSettings, registry: Registry) -> Predictor:
    """The model ``settings.model`` names: a registry reference or a bundle directory."""
    from common.bundle import load_bundle

    spec = settings.model
    if is_registry_ref(spec):
        record = registry.resolve(spec, settings.model_name)
        bundle = load_bundle(verify_bundle(record))
        identity = ServedModel(record.ref, record.name, record.version, record.stage,
                               record.schema_sha256)
    else:
        bundle_dir = bundle_dir_of(spec)
        bundle = load_bundle(bundle_dir)
        identity = ServedModel(f"bundle:{bundle_digest(bundle_dir)[:12]}", "bundle", None,
                               None, bundle.schema.content_hash())
    return Predictor(bundle, identity, required_modalities=settings.required_modalities,
                     torchscript=settings.torchscript)


def warm_up(predictor: Predictor) -> None:
    """First calls allocate and (for explain) import Captum: do it before serving."""
    from server.serving.explain import explain

    x = np.zeros((1, predictor.n_features), dtype=np.float32)
    mask = np.ones((1, len(predictor.modalities)), dtype=bool)
    for _ in range(3):
        predictor.forward(x, mask)
    explain(predictor, x, mask, x, target=0, steps=4, top_k=1)
