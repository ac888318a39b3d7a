"""PNG plots for run reports: per-round training curves and confusion matrices.

Figures are built on an explicit Agg canvas instead of through ``pyplot``: importing
this module does not import matplotlib, plotting works headless, and the process-wide
backend (a notebook's, say) is left untouched.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

DPI = 120
_SPLITS = ("train", "val", "test")
_SPLIT_STYLE = {"train": ":", "val": "--", "test": "-"}


def _new_figure(width: float, height: float, ncols: int = 1) -> tuple[Figure, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    fig.clear()  # release artists now rather than at garbage collection
    logger.debug("wrote %s", path)
    return path


def _number(value: Any) -> float | None:
    """A finite float, or None for missing / non-numeric / NaN entries."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _series(
    rounds: list[tuple[float, dict[str, Any]]], split: str, key: str
) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r, rec in rounds:
        part = rec.get(split)
        if not isinstance(part, dict):
            continue
        y = _number(part.get(key))
        if y is not None:
            xs.append(r)
            ys.append(y)
    return xs, ys


def plot_round_curves(
    rounds: list[dict[str, Any]],
    path: Path,
    keys: Sequence[str] = ("f1_macro", "accuracy"),
    title: str = "",
) -> Path:
    """Metrics per round (one line per available split and key), plus a loss panel.

    Each record looks like ``{"round": 3, "test": {...}, "val": {...}, "train": {...}}``;
    any split may be missing. The loss panel is drawn only when some split reports
    ``loss``. A record with ``"best": True`` is marked with a vertical line (the last
    such record when several are flagged). Returns ``path``.
    """
    # A record without "round" is numbered by its position (1-based).
    numbered = sorted(
        ((float(rec.get("round", i + 1)), rec) for i, rec in enumerate(rounds)),
        key=lambda pair: pair[0],
    )
    losses = {s: _series(numbered, s, "loss") for s in _SPLITS}
    losses = {s: xy for s, xy in losses.items() if xy[0]}
    fig, axes = _new_figure(11.0 if losses else 6.5, 4.2, ncols=2 if losses else 1)

    ax = axes[0]
    drawn = 0
    for split in _SPLITS:
        for key in keys:
            xs, ys = _series(numbered, split, key)
            if xs:
                ax.plot(xs, ys, _SPLIT_STYLE[split], marker="o", ms=3, label=f"{split} {key}")
                drawn += 1
    if drawn:
        ax.legend(fontsize=8, loc="best")
    else:
        ax.text(0.5, 0.5, "no metrics recorded", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("round")
    ax.set_ylabel("metric")
    ax.set_title("metrics")
    ax.grid(alpha=0.3)

    if losses:
        lax = axes[1]
        for split, (xs, ys) in losses.items():
            lax.plot(xs, ys, _SPLIT_STYLE[split], marker="o", ms=3, label=f"{split} loss")
        lax.set_xlabel("round")
        lax.set_ylabel("loss")
        lax.set_title("loss")
        lax.grid(alpha=0.3)
        lax.legend(fontsize=8, loc="best")

    best = [r for r, rec in numbered if rec.get("best") is True]
    if best:
        for a in axes:
            a.axvline(best[-1], color="gray", lw=1, alpha=0.8)
        axes[0].annotate(
            f"best (round {best[-1]:g})",
            xy=(best[-1], 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -12),
            textcoords="offset points",
            fontsize=8,
            color="gray",
        )
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_confusion_matrix(
    cm: Sequence[Sequence[int]],
    label_names: Sequence[str],
    path: Path,
    title: str = "",
    normalize: bool = True,
) -> Path:
    """Confusion matrix heatmap (rows = true class) with raw counts in every cell.

    With ``normalize`` the colours are row fractions (recall per true class; an empty
    row stays 0), otherwise raw counts. Returns ``path``.
    """
    counts = np.asarray(cm, dtype=np.int64)
    k = len(label_names)
    if counts.shape != (k, k):
        raise ValueError(f"confusion matrix shape {counts.shape} != ({k}, {k})")
    if normalize:
        row = counts.sum(axis=1, keepdims=True)
        colours = np.divide(
            counts, row, out=np.zeros(counts.shape, dtype=np.float64), where=row > 0
        )
        vmax = 1.0
    else:
        colours = counts.astype(np.float64)
        vmax = max(float(colours.max()), 1.0)

    side = max(4.0, 0.8 * k + 2.5)
    fig, axes = _new_figure(side + 1.0, side)
    ax = axes[0]
    im = ax.imshow(colours, cmap="Blues", vmin=0.0, vmax=vmax)
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cbar.set_label("fraction of true class" if normalize else "count")
    for i in range(k):
        for j in range(k):
            # Dark cells get white text so the count stays readable.
            dark = colours[i, j] > 0.55 * vmax
            ax.text(
                j,
                i,
                str(counts[i, j]),
                ha="center",
                va="center",
                fontsize=9,
                color="white" if dark else "black",
            )
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(label_names, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticklabels(label_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)
