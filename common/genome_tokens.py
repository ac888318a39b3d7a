"""Genomic-coordinate tokens: a modality's features grouped along the genome.

The features a modality's names locate (:mod:`common.annotation`: gene symbols, Ensembl
ids, miRNA names) are sorted by chromosome and position and cut into contiguous groups;
each group becomes one token (a linear map of its features), to which an encoding of
where the group lies is added: a learned chromosome embedding and a sinusoid of the
group's median position. The features no name locates (CpG probe ids, clinical columns,
unknown symbols) form one more token, with a learned "unknown" chromosome embedding
and no position. A modality with fewer located features than unknown ones keeps the
learned soft groups of :class:`common.model.ModalityTokenizer` instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from common.annotation import CHROMOSOMES, Locus, annotate

# Wavelengths of the position sinusoids, in base pairs: from 10 kb to 250 Mb.
SHORTEST_WAVELENGTH = 1e4
LONGEST_WAVELENGTH = 2.5e8
UNKNOWN_CHROMOSOME = len(CHROMOSOMES)  # the embedding row of the unlocated features' token


def genome_groups(names: Sequence[str], n_groups: int
                  ) -> tuple[list[list[int]], list[Locus | None]] | None:
    """Feature indices per token (located groups in genome order, then the unlocated
    ones) and each group's representative locus (None for the unlocated); None when
    fewer than half the features are located."""
    loci = annotate(names)
    located = sorted((loc, i) for i, loc in enumerate(loci) if loc is not None)
    unknown = [i for i, loc in enumerate(loci) if loc is None]
    if not located or len(located) < len(unknown):
        return None
    chunks = np.array_split(np.arange(len(located)), min(n_groups, len(located)))
    groups = [[located[j][1] for j in chunk] for chunk in chunks]
    anchors: list[Locus | None] = [located[int(np.median(chunk))][0] for chunk in chunks]
    if unknown:
        groups.append(unknown)
        anchors.append(None)
    return groups, anchors


def position_encoding(anchors: Sequence[Locus | None], d_model: int) -> torch.Tensor:
    """``[T, d_model]`` sinusoids of each token's position (0 for the unlocated token)."""
    half = d_model // 2
    wavelengths = np.geomspace(SHORTEST_WAVELENGTH, LONGEST_WAVELENGTH, max(half, 1))
    out = np.zeros((len(anchors), d_model), dtype=np.float32)
    for t, locus in enumerate(anchors):
        if locus is None:
            continue
        angle = 2 * math.pi * locus.position / wavelengths[:half]
        out[t, 0:2 * half:2] = np.sin(angle)
        out[t, 1:2 * half:2] = np.cos(angle)
    return torch.from_numpy(out)


class GenomeTokenizer(nn.Module):
    """One modality's features as tokens of contiguous genome groups (see module doc)."""

    def __init__(self, groups: list[list[int]], anchors: Sequence[Locus | None],
                 d_model: int, dropout: float) -> None:
        super().__init__()
        self.n_tokens = len(groups)
        self.sizes = [len(g) for g in groups]
        self.projections = nn.ModuleList(nn.Linear(n, d_model) for n in self.sizes)
        self.chromosome = nn.Embedding(len(CHROMOSOMES) + 1, d_model)
        self.drop = nn.Dropout(dropout)
        self.register_buffer("order", torch.tensor([i for g in groups for i in g]),
                             persistent=False)
        self.register_buffer("chromosome_ids", torch.tensor(
            [UNKNOWN_CHROMOSOME if a is None else a.rank for a in anchors]), persistent=False)
        self.register_buffer("position", position_encoding(anchors, d_model), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(self.drop(x)[:, self.order], self.sizes, dim=1)
        tokens = torch.stack([proj(p) for proj, p in zip(self.projections, parts, strict=True)],
                             dim=1)
        # Index with a batch dimension: Opacus reads dim 0 of every input as the sample.
        where = self.chromosome(self.chromosome_ids.repeat(x.shape[0], 1))
        return tokens + where + self.position
