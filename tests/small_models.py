"""The tiny model configuration the model tests build every kind from (fast, no dropout)."""

from __future__ import annotations

from common.config import ModelConfig

SMALL = {"d_model": 16, "n_heads": 2, "n_layers": 1, "tokens_per_modality": 2,
         "perceiver_tokens_per_modality": 2, "perceiver_latents": 3, "dropout": 0.0,
         "attention_dropout": 0.0, "modality_dropout": 0.0}


def small_config(kind: str, **overrides) -> ModelConfig:
    """``kind`` at the smallest useful size, with ``overrides`` on top."""
    return ModelConfig(**{"kind": kind, **SMALL, **overrides})
