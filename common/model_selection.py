"""Which epoch's or round's model to keep: the best on validation data."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class BestTracker:
    """Model selection on validation data: ``f1_macro`` (ties: lower loss) or ``loss``.

    Class-weighted validation loss keeps rising once a model grows confident on the
    majority classes while its macro-F1 still improves, so macro-F1 is the default.
    """

    criterion: str = "f1_macro"
    best_step: int = 0
    _best: tuple[float, ...] = (-math.inf, -math.inf)

    def __post_init__(self) -> None:
        if self.criterion not in ("f1_macro", "loss"):
            raise ValueError(f"selection must be 'f1_macro' or 'loss', not {self.criterion!r}")

    def update(self, step: int, f1_macro: float, loss: float) -> bool:
        """Record a validation result; True when it is the new best."""
        key = (f1_macro, -loss) if self.criterion == "f1_macro" else (-loss, f1_macro)
        if key > self._best:
            self._best, self.best_step = key, step
            return True
        return False

    def stale(self, step: int, patience: int) -> bool:
        return self.best_step > 0 and step - self.best_step >= patience

    def state(self) -> dict:
        """``{"best": [...], "best_step": n}``: what a checkpoint keeps to resume."""
        return {"best": [float(v) for v in self._best], "best_step": self.best_step}

    def restore(self, state: dict) -> None:
        """Continue from a :meth:`state` saved earlier."""
        self._best = tuple(float(v) for v in state["best"])
        self.best_step = int(state["best_step"])
