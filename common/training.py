"""Training and prediction loops shared by sites, the server and centralized runs.

``train_epochs`` is the one place where a model learns from a data loader; a site's
federated round, centralized training and (with an Opacus-wrapped model, optimizer and
loader) DP training all call it. Loss terms live in :mod:`common.losses`, the optimizer
and its schedule in :mod:`common.optimization`, model selection in
:mod:`common.model_selection`.
"""

from __future__ import annotations

import copy
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from common.config import TrainConfig
from common.dataset.multiomics import MultiOmicsData
from common.losses import ProximalTerm, class_weights, evaluation_loss, weighted_loss
from common.model_selection import BestTracker
from common.optimization import lr_at, make_optimizer

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def select_device(name: str = "auto") -> torch.device:
    """CUDA when present (or asked for), otherwise CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but no CUDA device is available")
    return device


def tensors(data: MultiOmicsData) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x [n, sum F], mask [n, M], y [n])`` tensors of standardized data (``mask`` goes
    on with the per-feature presence mask when some feature is not measured)."""
    x = torch.from_numpy(np.ascontiguousarray(data.concat(), dtype=np.float32))
    mask = torch.from_numpy(data.model_mask())
    y = torch.from_numpy(
        data.labels if data.labels is not None else np.full(data.n, -1, dtype=np.int64)
    )
    return x, mask, y


def make_loader(
    data: MultiOmicsData, batch_size: int, *, shuffle: bool, seed: int = 0
) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        TensorDataset(*tensors(data)),
        batch_size=batch_size or max(1, data.n),  # 0: full batch
        shuffle=shuffle,
        generator=generator,
        drop_last=False,
    )


@dataclass
class EpochStats:
    loss: float
    n_examples: int
    steps: int


def train_epochs(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    *,
    epochs: int,
    class_weight: np.ndarray,
    progress: tuple[float, float] = (0.0, 1.0),
    proximal: ProximalTerm | None = None,
    device: torch.device | None = None,
    on_step: Callable[[int], None] | None = None,
    criterion: Callable[[torch.Tensor, torch.Tensor], Any] | None = None,
) -> EpochStats:
    """Train ``model`` for ``epochs`` passes over ``loader``.

    The learning rate follows :func:`lr_at` from ``progress[0]`` to ``progress[1]``,
    so a federated round continues the schedule where the previous round stopped.
    """
    device = device or next(model.parameters()).device
    weights = torch.as_tensor(class_weight, dtype=torch.float32, device=device)
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    total_steps = max(epochs * max(len(loader), 1), 1)
    step, seen, loss_sum = 0, 0, 0.0
    model.train()
    for _ in range(epochs):
        for x, mask, y in loader:
            if len(y) == 0:  # Poisson sampling under DP can yield an empty batch
                step += 1
                continue
            x, mask, y = x.to(device), mask.to(device), y.to(device)
            lr = lr_at(progress[0] + (progress[1] - progress[0]) * step / total_steps, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                logits = model(x, mask)
                loss = (criterion(logits, y) if criterion is not None
                        else weighted_loss(logits, y, weights, cfg.label_smoothing))
                if proximal is not None and proximal.mu > 0:
                    loss = loss + proximal(model)
            scaler.scale(loss).backward()
            if cfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            loss_sum += float(loss.detach()) * len(y)
            seen += len(y)
            step += 1
            if on_step is not None:
                on_step(step)
    return EpochStats(loss=loss_sum / max(seen, 1), n_examples=seen, steps=step)


@torch.inference_mode()
def predict_proba(
    model: nn.Module,
    data: MultiOmicsData,
    device: torch.device | None = None,
    batch_size: int = 512,
) -> np.ndarray:
    """Class probabilities ``[n, C]`` for standardized data."""
    device = device or next(model.parameters()).device
    model.eval()
    x, mask, _ = tensors(data)
    out = []
    for i in range(0, len(x), batch_size):
        logits = model(x[i : i + batch_size].to(device), mask[i : i + batch_size].to(device))
        out.append(torch.softmax(logits.float(), dim=-1).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), dtype=np.float32)


@dataclass
class FitResult:
    best_epoch: int
    history: list[dict]
    state_dict: dict


def fit(
    model: nn.Module,
    train: MultiOmicsData,
    val: MultiOmicsData,
    cfg: TrainConfig,
    *,
    seed: int,
    class_weight: np.ndarray | None = None,
    evaluate: Callable[[nn.Module], dict] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> FitResult:
    """Centralized training with early stopping on validation (best weights restored).

    Selection follows ``cfg.selection`` (see :class:`BestTracker`).

    ``evaluate`` (optional) adds extra per-epoch metrics to the history, e.g. for plots;
    it never influences model selection.
    """
    from common.metrics import classification_metrics

    device = select_device(cfg.device)
    model.to(device)
    if class_weight is None:
        class_weight = class_weights(train.class_counts(), cfg.class_weighting)
    loader = make_loader(train, cfg.batch_size, shuffle=True, seed=seed)
    optimizer = make_optimizer(model, cfg)
    tracker, best_state, history = BestTracker(cfg.selection), None, []
    for epoch in range(1, cfg.max_epochs + 1):
        stats = train_epochs(
            model,
            loader,
            optimizer,
            cfg,
            epochs=1,
            class_weight=class_weight,
            progress=((epoch - 1) / cfg.max_epochs, epoch / cfg.max_epochs),
            device=device,
        )
        proba = predict_proba(model, val, device)
        val_loss = evaluation_loss(proba, val.labels, class_weight)
        val_metrics = classification_metrics(val.labels, proba, val.schema.label_names)
        record = {
            "epoch": epoch,
            "train": {"loss": stats.loss},
            "val": {
                "loss": val_loss,
                "f1_macro": val_metrics["f1_macro"],
                "accuracy": val_metrics["accuracy"],
            },
        }
        if evaluate is not None:
            record["test"] = evaluate(model)
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        if tracker.update(epoch, val_metrics["f1_macro"], val_loss):
            best_state = copy.deepcopy(model.state_dict())
        elif tracker.stale(epoch, cfg.patience):
            logger.info("early stop at epoch %d (best %d)", epoch, tracker.best_step)
            break
    assert best_state is not None
    model.load_state_dict(best_state)
    for rec in history:
        rec["best"] = rec["epoch"] == tracker.best_step
    return FitResult(best_epoch=tracker.best_step, history=history, state_dict=best_state)

