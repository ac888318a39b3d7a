"""The optimizer and its learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from common.config import TrainConfig


def lr_at(progress: float, cfg: TrainConfig) -> float:
    """Linear warmup then cosine decay to ``min_lr_fraction * lr``; ``progress`` in [0, 1]."""
    p = min(max(progress, 0.0), 1.0)
    if cfg.warmup_fraction > 0 and p < cfg.warmup_fraction:
        return cfg.lr * max(p / cfg.warmup_fraction, 0.02)
    span = max(1.0 - cfg.warmup_fraction, 1e-9)
    cos = 0.5 * (1 + math.cos(math.pi * (p - cfg.warmup_fraction) / span))
    return cfg.lr * (cfg.min_lr_fraction + (1 - cfg.min_lr_fraction) * cos)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (or SGD with momentum) with weight decay on weight matrices only."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_matrix = p.ndim >= 2 and "embedding" not in name and "modality_logit" not in name
        (decay if is_matrix else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.optimizer != "adamw":
        raise ValueError(f"unknown optimizer {cfg.optimizer!r} (use 'adamw' or 'sgd')")
    return torch.optim.AdamW(groups, lr=cfg.lr)
