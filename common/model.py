"""The multi-modal transformer for multi-omics classification.

Each modality's standardized features are projected into a few tokens (learned soft
feature groups), tagged with a modality and token embedding, and passed through
pre-LayerNorm transformer blocks whose attention spans the tokens of every modality
the patient has (cross-modal attention). Tokens of a missing modality are masked out
as keys and excluded from pooling. Each modality's tokens are mean-pooled, the pooled
vectors are fused with learned modality weights (a softmax over the patient's present
modalities), and a linear head gives class logits.

Absent features: the mask may carry, after the modality mask, a per-feature presence mask
(:func:`split_mask`). A feature a site does not measure is 0 in ``x``, like an average
value; each modality adds to its tokens a learned "absent" embedding per feature the
patient lacks (:class:`AbsentFeatures`), so the model can tell the two apart.

Opacus compatibility: only ``nn.Linear``, ``nn.LayerNorm``, ``nn.Embedding`` and
``nn.Dropout`` hold parameters, attention is written from ``nn.Linear``, and no bare
``nn.Parameter`` sits on any module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from common.config import ModelConfig
from common.schema import FeatureSchema


@dataclass
class ModelSpec:
    """Everything needed to build the network: architecture plus data shape."""

    config: ModelConfig
    feature_counts: dict[str, int]
    n_classes: int
    extra: dict = field(default_factory=dict)
    # Per modality, the feature names (genomic-coordinate tokens read them).
    feature_names: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def for_schema(cls, config: ModelConfig, schema: FeatureSchema) -> ModelSpec:
        return cls(config, schema.feature_counts(), schema.n_classes,
                   feature_names={m: schema.features(m) for m in schema.modality_names})


class SelfAttention(nn.Module):
    """Multi-head self-attention from ``nn.Linear`` with a key padding mask."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.n_heads
        q, k, v = self.qkv(x).view(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)
        return self.out(attend(q, k, v, key_bias, self.dropout).reshape(b, t, d))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_bias: torch.Tensor,
           dropout: nn.Dropout) -> torch.Tensor:
    """Scaled dot-product attention of ``q`` ``[B, H, N, d]`` over ``k``, ``v``
    ``[B, H, T, d]`` with an additive key bias ``[B, T]``; returns ``[B, N, H, d]``."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + key_bias[:, None, None, :]
    attn = dropout(torch.softmax(scores, dim=-1))
    return (attn @ v).transpose(1, 2)


def feed_forward(cfg: ModelConfig) -> nn.Sequential:
    """The blocks' position-wise feed-forward network."""
    d = cfg.d_model
    return nn.Sequential(nn.Linear(d, cfg.ffn_mult * d), nn.GELU(), nn.Dropout(cfg.dropout),
                         nn.Linear(cfg.ffn_mult * d, d))


class Block(nn.Module):
    """Pre-LayerNorm transformer block."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.norm1 = nn.LayerNorm(d)
        self.attn = SelfAttention(d, cfg.n_heads, cfg.attention_dropout)
        self.norm2 = nn.LayerNorm(d)
        self.ffn = feed_forward(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), key_bias))
        return x + self.drop(self.ffn(self.norm2(x)))


class ModalityTokenizer(nn.Module):
    """Projects one modality's features into ``n_tokens`` tokens of width ``d_model``."""

    def __init__(self, n_features: int, n_tokens: int, d_model: int, dropout: float) -> None:
        super().__init__()
        self.n_tokens = n_tokens
        self.d_model = d_model
        self.proj = nn.Linear(n_features, n_tokens * d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.drop(x)).view(x.shape[0], self.n_tokens, self.d_model)


def split_mask(mask: torch.Tensor, n_modalities: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(present [B, M] bool, feature_present [B, sum F_m] bool or None)`` of a model mask.

    A model mask is ``[B, M]`` (the modality mask: 1 = present) or ``[B, M + sum F_m]``:
    the modality mask followed by a per-feature presence mask (1 = measured); without
    the latter every feature counts as measured.
    """
    present = mask[:, :n_modalities] > 0.5
    if mask.shape[1] == n_modalities:
        return present, None
    return present, mask[:, n_modalities:] > 0.5


def zero_linear(n_in: int, n_out: int) -> nn.Linear:
    """An ``nn.Linear`` without bias whose weights are zero, made without drawing from the
    global random stream: a model with it starts as, and draws every other weight as, the
    model without it."""
    with torch.random.fork_rng(devices=[]):
        layer = nn.Linear(n_in, n_out, bias=False)
    nn.init.zeros_(layer.weight)
    return layer


class AbsentFeatures(nn.Module):
    """A learned ``d_model`` vector per feature, summed over the features a patient lacks.

    Written as an ``nn.Linear`` without bias over the absence indicators (one weight
    column per feature), so Opacus computes its per-sample gradients. Starts at zero:
    a model only learns an absent feature's embedding from patients lacking it.
    """

    def __init__(self, n_features: int, d_model: int) -> None:
        super().__init__()
        self.embedding = zero_linear(n_features, d_model)

    def forward(self, absent: torch.Tensor) -> torch.Tensor:
        """``[B, d_model]`` from ``absent`` ``[B, F]`` (1 = the patient lacks the feature)."""
        return self.embedding(absent)


class FeatureMasking:
    """Per-feature presence masks, shared by every model kind that reads them.

    ``self.accepts_feature_mask`` is True once built; loading weights saved before the
    model had :class:`AbsentFeatures` (an older bundle) fills those with zeros and sets
    it False: such a model ignores feature masks (every feature counts as measured).
    """

    accepts_feature_mask: bool
    modalities: list[str]
    sizes: list[int]

    def _init_feature_masking(self: nn.Module) -> None:  # type: ignore[misc]
        self.accepts_feature_mask = True
        self.register_buffer("feature_modality", torch.repeat_interleave(
            torch.arange(len(self.sizes)), torch.tensor(self.sizes)), persistent=False)
        self.register_load_state_dict_pre_hook(_fill_absent_embeddings)

    def absence(self, mask: torch.Tensor, present: torch.Tensor, dtype: torch.dtype
                ) -> torch.Tensor:
        """``[B, sum F_m]``: 1 where a present modality lacks the feature, else 0."""
        _, feature_present = split_mask(mask, len(self.modalities))
        if feature_present is None or not self.accepts_feature_mask:
            return torch.zeros((mask.shape[0], sum(self.sizes)), dtype=dtype,
                               device=mask.device)
        return (~feature_present & present[:, self.feature_modality]).to(dtype)


def _fill_absent_embeddings(model: nn.Module, state_dict: dict, prefix: str, *_: object
                            ) -> None:
    """Load-state pre-hook: weights saved without absence embeddings get zero ones, and
    the model then ignores feature masks."""
    wanted = {f"{prefix}{name}.embedding.weight": module.embedding.weight
              for name, module in model.named_modules() if isinstance(module, AbsentFeatures)}
    missing = {key: weight for key, weight in wanted.items() if key not in state_dict}
    state_dict.update({key: torch.zeros_like(weight) for key, weight in missing.items()})
    model.accepts_feature_mask = not missing


def accepts_feature_mask(model: nn.Module) -> bool:
    """Whether ``model`` reads per-feature presence masks (see :class:`FeatureMasking`)."""
    return bool(getattr(model, "accepts_feature_mask", False))


class ModalityWeighting:
    """Learned modality weights shared by every model kind: one logit per modality
    (``self.modality_logit``, an ``nn.Embedding(M, 1)``; ``self.modality_ids``, a buffer
    ``arange(M)``), softmax over the patient's present modalities. Explanations and
    reports read them through :meth:`modality_weights` and
    :meth:`learned_modality_weights`."""

    modalities: list[str]
    modality_logit: nn.Embedding
    modality_ids: torch.Tensor

    def modality_logits(self, present: torch.Tensor) -> torch.Tensor:
        """Learned logits ``[B, M]``, ``-1e4`` for the patient's missing modalities
        (``present`` may be a whole model mask: its first ``M`` columns are read)."""
        present = present[:, :len(self.modalities)]
        ids = self.modality_ids.repeat(present.shape[0], 1)  # batch-first, as for Opacus
        return self.modality_logit(ids).squeeze(-1).masked_fill(~present, -1e4)

    def modality_weights(self, present: torch.Tensor) -> torch.Tensor:
        """Fusion weights ``[B, M]``: softmax of learned logits over present modalities."""
        present = present[:, :len(self.modalities)]
        return torch.softmax(self.modality_logits(present), dim=-1) * present

    def learned_modality_weights(self) -> dict[str, float]:
        """Fusion weights when every modality is present (for reports and explanations)."""
        with torch.no_grad():
            w = self.modality_weights(torch.ones(1, len(self.modalities), dtype=torch.bool))
        return {m: float(v) for m, v in zip(self.modalities, w[0], strict=True)}


class MultiModalTransformer(ModalityWeighting, FeatureMasking, nn.Module):
    """Cross-modal attention classifier over any subset of known modalities.

    ``forward(x, mask)``: ``x`` is ``[B, sum F_m]`` (modalities concatenated in schema
    order, standardized, zeros where missing), ``mask`` is ``[B, M]`` (1 = present),
    optionally followed by a per-feature presence mask (:func:`split_mask`).
    Returns logits ``[B, n_classes]``.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        cfg = spec.config
        self.spec = spec
        self.modalities = list(spec.feature_counts)
        self.sizes = [spec.feature_counts[m] for m in self.modalities]
        self.tokenizers = nn.ModuleList(_tokenizer(spec, m) for m in self.modalities)
        self.tokens = [t.n_tokens for t in self.tokenizers]
        self.absent = nn.ModuleList(AbsentFeatures(n, cfg.d_model) for n in self.sizes)
        self._init_feature_masking()
        n_tok = sum(self.tokens)
        # Token identity (which modality, which soft group) as an embedding lookup.
        self.token_embedding = nn.Embedding(n_tok, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        # Learned modality weights: one logit per modality, softmax over present ones.
        self.modality_logit = nn.Embedding(len(self.modalities), 1)
        nn.init.zeros_(self.modality_logit.weight)
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(cfg.d_model, spec.n_classes))
        self.linear_path = (LinearPath(sum(self.sizes), spec.n_classes)
                            if cfg.linear_path else None)
        token_modality = torch.repeat_interleave(
            torch.arange(len(self.modalities)), torch.tensor(self.tokens)
        )
        self.register_buffer("token_modality", token_modality, persistent=False)
        self.register_buffer("token_ids", torch.arange(n_tok), persistent=False)
        self.register_buffer("modality_ids", torch.arange(len(self.modalities)), persistent=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        present, _ = split_mask(mask, len(self.modalities))
        absence = self.absence(mask, present, x.dtype)
        x = x * (1.0 - absence)  # an absent feature's value is never read
        absent = torch.split(absence, self.sizes, dim=1)
        if self.training and self.spec.config.modality_dropout > 0:
            present = drop_modalities(present, self.spec.config.modality_dropout)
        parts = torch.split(x, self.sizes, dim=1)
        tok = torch.cat(modality_tokens(self.tokenizers, self.absent, parts, absent), dim=1)
        # Index with a batch dimension: Opacus reads dim 0 of every input as the sample.
        tok = tok + self.token_embedding(self.token_ids.repeat(x.shape[0], 1))
        token_present = present[:, self.token_modality]  # [B, T]
        key_bias = torch.zeros(token_present.shape, dtype=tok.dtype, device=tok.device)
        key_bias = key_bias.masked_fill(~token_present, -1e4)
        for block in self.blocks:
            tok = block(tok, key_bias)
        tok = self.norm(tok)
        pooled = torch.stack(
            [t.mean(dim=1) for t in torch.split(tok, self.tokens, dim=1)], dim=1
        )  # [B, M, d]
        weights = self.modality_weights(present)
        fused = (weights.unsqueeze(-1) * pooled).sum(dim=1)
        logits = self.head(fused)
        if self.linear_path is not None:
            # The modalities hidden by modality dropout are hidden from this path too, so
            # it does not lean on a modality a test patient may lack.
            logits = logits + self.linear_path(x * present[:, self.feature_modality])
        return logits


class LinearPath(nn.Module):
    """Class logits linear in the features (the caller zeroes a missing modality's);
    starts at zero (:func:`zero_linear`)."""

    def __init__(self, n_features: int, n_classes: int) -> None:
        super().__init__()
        self.linear = zero_linear(n_features, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def modality_tokens(tokenizers: nn.ModuleList, absent_embeddings: nn.ModuleList,
                    parts: tuple[torch.Tensor, ...], absent: tuple[torch.Tensor, ...]
                    ) -> list[torch.Tensor]:
    """Each modality's tokens ``[B, T_m, d]``, every token carrying the modality's
    absent-feature embedding."""
    return [enc(p) + emb(a).unsqueeze(1) for enc, emb, p, a
            in zip(tokenizers, absent_embeddings, parts, absent, strict=True)]


def _tokenizer(spec: ModelSpec, modality: str) -> nn.Module:
    """Genomic-coordinate tokens when configured and the names locate most features,
    else learned soft groups."""
    cfg, n = spec.config, spec.feature_counts[modality]
    names = spec.feature_names.get(modality)
    if cfg.genome_tokens > 0 and names:
        from common.genome_tokens import GenomeTokenizer, genome_groups

        grouped = genome_groups(names, cfg.genome_tokens)
        if grouped is not None:
            return GenomeTokenizer(*grouped, cfg.d_model, cfg.dropout)
    return ModalityTokenizer(n, min(cfg.tokens_per_modality, n), cfg.d_model, cfg.dropout)


def drop_modalities(present: torch.Tensor, p: float) -> torch.Tensor:
    """Hide each present modality with probability ``p``, keeping at least one per patient."""
    keep = torch.rand(present.shape, device=present.device) >= p
    dropped = present & keep
    empty = ~dropped.any(dim=1, keepdim=True)
    # No data-dependent branch: per-sample gradients vmap over this function.
    return torch.where(empty, present, dropped)


def build_model(spec: ModelSpec) -> nn.Module:
    """The network of kind ``spec.config.kind`` (registry: :mod:`common.model_kinds`)."""
    from common.model_kinds import build_model as build_kind

    return build_kind(spec)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
