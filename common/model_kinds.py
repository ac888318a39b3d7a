"""The model kinds: architecture name -> builder of the network.

Every kind has the interface of :class:`common.model.MultiModalTransformer`:
``forward(x, mask)`` with ``x`` ``[B, sum F_m]`` (modalities in schema order,
standardized, zeros where missing) and ``mask`` ``[B, M]`` (1 = present), logits out;
the mask may go on with a per-feature presence mask ``[B, sum F_m]``
(:func:`common.model.split_mask`), which a kind that reads it exposes as
``accepts_feature_mask`` (:func:`common.model.accepts_feature_mask`) and any other kind
ignores (every feature counts as measured);
``modality_weights(present)`` and ``learned_modality_weights()`` for explanations; only
``nn.Linear``, ``nn.LayerNorm``, ``nn.Embedding`` and ``nn.Dropout`` hold parameters, so
Opacus and ``torch.func`` compute per-patient gradients. A bundle records the kind in its
model config (:class:`common.config.ModelConfig`), and :func:`build_model` rebuilds it.

Builders import their module when called, so the names are known without torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from common.model import ModelSpec

Builder = Callable[["ModelSpec"], "nn.Module"]


def _builder(module: str, name: str) -> Builder:
    """A builder that imports ``module`` and calls its ``name`` with the spec."""

    def build(spec: ModelSpec) -> nn.Module:
        return getattr(importlib.import_module(module), name)(spec)

    build.__qualname__ = f"{module}.{name}"
    return build


KINDS: dict[str, Builder] = {
    "mmt": _builder("common.model", "MultiModalTransformer"),
    "tabtransformer": _builder("common.tabtransformer", "TabTransformer"),
    "perceiver": _builder("common.perceiver", "PerceiverIO"),
    "centroid": _builder("common.centroid", "build_centroid"),
}


class UnknownModelKind(ValueError):
    """A model kind that is not in :data:`KINDS`."""


def check_kind(kind: str) -> str:
    """``kind`` if it is registered; otherwise raise naming the valid kinds."""
    if kind not in KINDS:
        raise UnknownModelKind(f"unknown model kind {kind!r}; valid kinds: "
                               f"{', '.join(KINDS)}")
    return kind


def build_model(spec: ModelSpec) -> Any:
    """The untrained network of kind ``spec.config.kind``."""
    return KINDS[check_kind(spec.config.kind)](spec)
