"""Perceiver IO: a small latent array reads every feature token, a class query reads it.

Each modality's standardized features are projected into a few tokens (learned soft
feature groups, as in :class:`common.model.MultiModalTransformer`) tagged with a token
embedding. A small array of learned latents (``ModelConfig.perceiver_latents``, looked up
through an ``nn.Embedding`` of indices) cross-attends to all tokens; self-attention
blocks (``n_layers``) then work on the latents only, so their cost does not grow with the
number of features; finally one learned class query cross-attends to the latents and a
linear head gives class logits.

Missing modalities: their tokens are masked as keys of the input cross-attention. The
learned modality weights enter that attention as a bias (each present token carries its
modality's logit), so a modality's weight is its prior share of the latents' attention.
Absent features (a per-feature presence mask after the modality mask): each modality's
tokens carry a learned embedding per feature the patient lacks, as in
:class:`common.model.MultiModalTransformer`.
Opacus-trainable: only ``nn.Linear``, ``nn.LayerNorm``, ``nn.Embedding`` and
``nn.Dropout`` hold parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from common.config import ModelConfig
from common.model import (
    AbsentFeatures,
    Block,
    FeatureMasking,
    ModalityTokenizer,
    ModalityWeighting,
    ModelSpec,
    attend,
    drop_modalities,
    feed_forward,
    modality_tokens,
    split_mask,
)


class CrossAttention(nn.Module):
    """Multi-head attention of queries over a context, from ``nn.Linear``."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, queries: torch.Tensor, context: torch.Tensor,
                key_bias: torch.Tensor) -> torch.Tensor:
        b, n, d = queries.shape
        t, h = context.shape[1], self.n_heads
        q = self.q(queries).view(b, n, h, d // h).transpose(1, 2)
        k, v = self.kv(context).view(b, t, 2, h, d // h).permute(2, 0, 3, 1, 4)
        return self.out(attend(q, k, v, key_bias, self.dropout).reshape(b, n, d))


class CrossBlock(nn.Module):
    """Pre-LayerNorm cross-attention then feed-forward, on the queries."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.query_norm = nn.LayerNorm(d)
        self.context_norm = nn.LayerNorm(d)
        self.attn = CrossAttention(d, cfg.n_heads, cfg.attention_dropout)
        self.ffn_norm = nn.LayerNorm(d)
        self.ffn = feed_forward(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, queries: torch.Tensor, context: torch.Tensor,
                key_bias: torch.Tensor) -> torch.Tensor:
        attended = self.attn(self.query_norm(queries), self.context_norm(context), key_bias)
        queries = queries + self.drop(attended)
        return queries + self.drop(self.ffn(self.ffn_norm(queries)))


class PerceiverIO(ModalityWeighting, FeatureMasking, nn.Module):
    """``forward(x, mask)`` as :class:`common.model.MultiModalTransformer`."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        cfg = spec.config
        d = cfg.d_model
        self.spec = spec
        self.modalities = list(spec.feature_counts)
        self.sizes = [spec.feature_counts[m] for m in self.modalities]
        self.tokens = [min(cfg.perceiver_tokens_per_modality, n) for n in self.sizes]
        self.tokenizers = nn.ModuleList(
            ModalityTokenizer(n, t, d, cfg.dropout)
            for n, t in zip(self.sizes, self.tokens, strict=True))
        self.absent = nn.ModuleList(AbsentFeatures(n, d) for n in self.sizes)
        self._init_feature_masking()
        n_tok = sum(self.tokens)
        self.token_embedding = nn.Embedding(n_tok, d)
        self.latent_embedding = nn.Embedding(cfg.perceiver_latents, d)
        self.encode = CrossBlock(cfg)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.class_query = nn.Embedding(1, d)
        self.decode = CrossBlock(cfg)
        self.norm = nn.LayerNorm(d)
        self.modality_logit = nn.Embedding(len(self.modalities), 1)
        nn.init.zeros_(self.modality_logit.weight)
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(d, spec.n_classes))
        token_modality = torch.repeat_interleave(
            torch.arange(len(self.modalities)), torch.tensor(self.tokens))
        self.register_buffer("token_modality", token_modality, persistent=False)
        self.register_buffer("token_ids", torch.arange(n_tok), persistent=False)
        self.register_buffer("latent_ids", torch.arange(cfg.perceiver_latents),
                             persistent=False)
        self.register_buffer("query_ids", torch.zeros(1, dtype=torch.long), persistent=False)
        self.register_buffer("modality_ids", torch.arange(len(self.modalities)), persistent=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        present, _ = split_mask(mask, len(self.modalities))
        absence = self.absence(mask, present, x.dtype)
        x = x * (1.0 - absence)  # an absent feature's value is never read
        absent = torch.split(absence, self.sizes, dim=1)
        if self.training and self.spec.config.modality_dropout > 0:
            present = drop_modalities(present, self.spec.config.modality_dropout)
        b = x.shape[0]
        parts = torch.split(x, self.sizes, dim=1)
        tok = torch.cat(modality_tokens(self.tokenizers, self.absent, parts, absent), dim=1)
        # Index with a batch dimension: Opacus reads dim 0 of every input as the sample.
        tok = tok + self.token_embedding(self.token_ids.repeat(b, 1))
        key_bias = self.modality_logits(present)[:, self.token_modality].to(tok.dtype)
        latents = self.latent_embedding(self.latent_ids.repeat(b, 1))
        latents = self.encode(latents, tok, key_bias)
        no_mask = torch.zeros(latents.shape[:2], dtype=latents.dtype, device=latents.device)
        for block in self.blocks:
            latents = block(latents, no_mask)
        query = self.class_query(self.query_ids.repeat(b, 1))
        out = self.decode(query, latents, no_mask)
        return self.head(self.norm(out[:, 0]))
