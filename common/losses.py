"""Loss terms: class weights, class-weighted cross-entropy, FedProx's proximal term, and
the validation loss used for model selection."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


def class_weights(counts: np.ndarray, mode: str = "balanced") -> np.ndarray:
    """Per-class loss weights from class counts; absent classes get weight 0."""
    counts = np.asarray(counts, dtype=np.float64)
    if mode == "none":
        return np.ones_like(counts, dtype=np.float32)
    if mode != "balanced":
        raise ValueError(f"unknown class weighting {mode!r} (use 'balanced' or 'none')")
    present = counts > 0
    w = np.zeros_like(counts)
    w[present] = counts.sum() / (present.sum() * counts[present])
    return w.astype(np.float32)


def weighted_loss(
    logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, smoothing: float = 0.0
) -> torch.Tensor:
    """Per-sample class-weighted cross-entropy, averaged.

    Weighting each sample's own loss (rather than ``CrossEntropyLoss(weight=...)``,
    which normalises by the batch's total weight) keeps samples independent, as
    per-sample gradient clipping under DP-SGD requires.
    """
    return WeightedCrossEntropy(weights, smoothing)(logits, y)


class WeightedCrossEntropy(nn.Module):
    """:func:`weighted_loss` as a criterion with a ``reduction`` attribute ("mean",
    "sum" or "none"), the interface Opacus' ghost clipping drives.

    ``logit_offset`` (the log class prior): the logit-adjusted loss (Menon et al., 2021),
    which balances the classes without weights, which per-sample clipping would cancel.
    """

    def __init__(self, weights: torch.Tensor, smoothing: float = 0.0,
                 reduction: str = "mean", logit_offset: torch.Tensor | None = None) -> None:
        super().__init__()
        self.weights, self.smoothing, self.reduction = weights, smoothing, reduction
        self.logit_offset = logit_offset

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.logit_offset is not None:
            logits = logits + self.logit_offset
        per_sample = self.weights[y] * nn.functional.cross_entropy(
            logits, y, reduction="none", label_smoothing=self.smoothing)
        if self.reduction == "none":
            return per_sample
        return per_sample.sum() if self.reduction == "sum" else per_sample.mean()


@dataclass
class ProximalTerm:
    """FedProx: ``mu / 2 * ||w - w_global||^2`` added to the local loss."""

    mu: float
    global_params: list[torch.Tensor]

    @classmethod
    def snapshot(cls, model: nn.Module, mu: float) -> ProximalTerm:
        return cls(mu, [p.detach().clone() for p in model.parameters()])

    def __call__(self, model: nn.Module) -> torch.Tensor:
        total = sum(
            ((p - g) ** 2).sum()
            for p, g in zip(model.parameters(), self.global_params, strict=True)
        )
        return 0.5 * self.mu * total


def evaluation_loss(proba: np.ndarray, labels: np.ndarray, class_weight: np.ndarray) -> float:
    """Class-weighted negative log-likelihood of labelled data (model selection)."""
    p = np.clip(proba[np.arange(len(labels)), labels], 1e-7, 1.0)
    return float(np.mean(class_weight[labels] * -np.log(p)))
