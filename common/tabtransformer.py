"""TabTransformer: clinical columns as embedded tokens, omics through a normalised MLP.

Two paths, concatenated into the head:

- **Token path.** Every column of the token modalities (``ModelConfig.tab_token_modalities``,
  by default ``clinical``) becomes one token: a learned column embedding plus the
  column's standardized value times a learned value embedding. For a one-hot
  categorical column (two values) this is exactly a lookup of one embedding per level,
  the TabTransformer's categorical embedding; for a numeric clinical column (age,
  stage) it is a numeric embedding. The tokens pass through pre-LayerNorm transformer
  blocks (attention over the patient's present columns) and are mean-pooled per modality.
- **Continuous path.** Each other modality (the omics) is LayerNorm-ed on its own, and
  the concatenation goes through a two-layer MLP.

The data layer has no categorical input type: categorical clinical variables arrive
one-hot encoded and standardized like any feature, which the token path handles as
above. When the data carry none of the token modalities (e.g. ROSMAP, three omics), the
token path is empty and the model is an MLP over normalised omics; when every modality
is a token modality, the continuous path is empty.

Missing modalities: each modality's contribution is scaled by its learned fusion weight
(softmax over the patient's present modalities, times their number, so equal weights
scale by 1); a missing modality's weight is 0, and its columns are masked as attention
keys.

Absent features (a per-feature presence mask after the modality mask): an absent column
of a token modality is masked as an attention key and left out of its modality's mean;
the continuous path adds a learned embedding per absent feature
(:class:`common.model.AbsentFeatures`) to the MLP's output.

Opacus-trainable: only ``nn.Linear``, ``nn.LayerNorm``, ``nn.Embedding`` and
``nn.Dropout`` hold parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from common.model import (
    AbsentFeatures,
    Block,
    FeatureMasking,
    ModalityWeighting,
    ModelSpec,
    drop_modalities,
    split_mask,
)


class TabTransformer(ModalityWeighting, FeatureMasking, nn.Module):
    """``forward(x, mask)`` as :class:`common.model.MultiModalTransformer`."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        cfg = spec.config
        d = cfg.d_model
        self.spec = spec
        self.modalities = list(spec.feature_counts)
        self.sizes = [spec.feature_counts[m] for m in self.modalities]
        wanted = {m.strip() for m in cfg.tab_token_modalities.split(",") if m.strip()}
        self.token_index = [j for j, m in enumerate(self.modalities) if m in wanted]
        self.continuous_index = [j for j, m in enumerate(self.modalities) if m not in wanted]
        n_columns = sum(self.sizes[j] for j in self.token_index)
        n_continuous = sum(self.sizes[j] for j in self.continuous_index)
        if n_columns:
            self.column_embedding = nn.Embedding(n_columns, d)
            self.value_embedding = nn.Embedding(n_columns, d)
            self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
            self.token_norm = nn.LayerNorm(d)
        if n_continuous:
            self.continuous_norms = nn.ModuleList(
                nn.LayerNorm(self.sizes[j]) for j in self.continuous_index)
            self.mlp = nn.Sequential(
                nn.Dropout(cfg.dropout),
                nn.Linear(n_continuous, cfg.ffn_mult * d),
                nn.GELU(),
                nn.Dropout(cfg.dropout),
                nn.Linear(cfg.ffn_mult * d, d),
            )
            self.absent = AbsentFeatures(n_continuous, d)
        self._init_feature_masking()
        self.modality_logit = nn.Embedding(len(self.modalities), 1)
        nn.init.zeros_(self.modality_logit.weight)
        paths = bool(n_columns) + bool(n_continuous)
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(paths * d, spec.n_classes))
        column_modality = torch.repeat_interleave(
            torch.tensor(self.token_index, dtype=torch.long),
            torch.tensor([self.sizes[j] for j in self.token_index], dtype=torch.long))
        # [C, C]: 1 where two columns belong to the same modality (a per-modality count of
        # the patient's measured columns, for a per-modality mean).
        same_modality = (column_modality[:, None] == column_modality[None, :]).float()
        self.register_buffer("column_modality", column_modality, persistent=False)
        self.register_buffer("same_modality", same_modality, persistent=False)
        self.register_buffer("column_ids", torch.arange(n_columns), persistent=False)
        self.register_buffer("modality_ids", torch.arange(len(self.modalities)), persistent=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        present, _ = split_mask(mask, len(self.modalities))
        absence = self.absence(mask, present, x.dtype)
        x = x * (1.0 - absence)  # an absent feature's value is never read
        absent = torch.split(absence, self.sizes, dim=1)
        if self.training and self.spec.config.modality_dropout > 0:
            present = drop_modalities(present, self.spec.config.modality_dropout)
        # Each modality's scale: its fusion weight times the patient's present count
        # (1 when the weights are equal), 0 when missing.
        scale = self.modality_weights(present) * present.sum(dim=1, keepdim=True)
        parts = torch.split(x, self.sizes, dim=1)
        features = []
        if self.token_index:
            column_absent = torch.cat([absent[j] for j in self.token_index], dim=1)
            features.append(self._token_path(parts, present, scale, column_absent))
        if self.continuous_index:
            normed = [norm(parts[j]) * scale[:, j:j + 1]
                      for norm, j in zip(self.continuous_norms, self.continuous_index,
                                         strict=True)]
            lacking = torch.cat([absent[j] for j in self.continuous_index], dim=1)
            features.append(self.mlp(torch.cat(normed, dim=1)) + self.absent(lacking))
        return self.head(torch.cat(features, dim=1))

    def _token_path(self, parts: tuple[torch.Tensor, ...], present: torch.Tensor,
                    scale: torch.Tensor, column_absent: torch.Tensor) -> torch.Tensor:
        values = torch.cat([parts[j] for j in self.token_index], dim=1)  # [B, C]
        # Index with a batch dimension: Opacus reads dim 0 of every input as the sample.
        ids = self.column_ids.repeat(values.shape[0], 1)
        tok = self.column_embedding(ids) + self.value_embedding(ids) * values.unsqueeze(-1)
        column_present = present[:, self.column_modality] & (column_absent < 0.5)
        key_bias = torch.zeros(column_present.shape, dtype=tok.dtype, device=tok.device)
        key_bias = key_bias.masked_fill(~column_present, -1e4)
        for block in self.blocks:
            tok = block(tok, key_bias)
        tok = self.token_norm(tok)
        measured = column_present.to(tok.dtype)
        share = measured / (measured @ self.same_modality).clamp(min=1.0)
        pool = scale[:, self.column_modality] * share  # [B, C]
        return (tok * pool.unsqueeze(-1)).sum(dim=1)
