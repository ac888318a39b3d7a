"""Report figures as inline images (``data:image/png;base64,...``): nothing to fetch.

Built on an explicit Agg canvas, never through ``pyplot``, so it runs headless and
leaves the process-wide matplotlib backend alone.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 100


def _figure(width: float, height: float, ncols: int = 1) -> tuple[Figure, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _data_uri(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, dpi=DPI, format="png")
    fig.clear()
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def class_mix(sites: list[dict], label_names: Sequence[str]) -> str:
    """Stacked bars: each site's training + validation patients per class."""
    fig, (ax,) = _figure(8, 3.2)
    names = [s["site"] for s in sites]
    bottom = np.zeros(len(sites))
    for label in label_names:
        counts = np.array([s.get("class_counts", {}).get(label, 0) for s in sites], float)
        ax.bar(names, counts, bottom=bottom, label=label)
        bottom += counts
    ax.set_ylabel("patients (train + val)")
    ax.tick_params(axis="x", labelrotation=45)
    ax.legend(fontsize=7, ncols=min(5, len(label_names)))
    return _data_uri(fig)


def round_curves(rounds: list[dict], step: str = "round") -> str:
    """Validation macro-F1 per site (thin), pooled validation and test macro-F1 (thick)."""
    fig, (ax, loss_ax) = _figure(9, 3.4, ncols=2)
    per_site: dict[str, list[tuple[int, float]]] = {}
    for rec in rounds:
        for site in rec.get("sites", []):
            f1 = site.get("val", {}).get("f1_macro")
            if f1 is not None:
                per_site.setdefault(site["site"], []).append((rec[step], f1))
    for _site, points in sorted(per_site.items()):
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, lw=0.8, alpha=0.45, label=None)
    for split, style in (("val", "--"), ("test", "-")):
        pts = [(r[step], r[split]["f1_macro"]) for r in rounds
               if isinstance(r.get(split), dict) and "f1_macro" in r[split]]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, style, lw=2.2, color="black" if split == "test" else "tab:blue",
                    marker="o", ms=3, label=f"pooled {split}")
        lpts = [(r[step], r[split]["loss"]) for r in rounds
                if isinstance(r.get(split), dict) and "loss" in r[split]]
        if lpts:
            xs, ys = zip(*lpts, strict=True)
            loss_ax.plot(xs, ys, style, marker="o", ms=3, label=f"{split} loss")
    tpts = [(r[step], r["train"]["loss"]) for r in rounds if "loss" in r.get("train", {})]
    if tpts:
        xs, ys = zip(*tpts, strict=True)
        loss_ax.plot(xs, ys, ":", marker="o", ms=3, label="train loss")
    from matplotlib.ticker import MaxNLocator

    best = [r[step] for r in rounds if r.get("best")]
    for a in (ax, loss_ax):
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
        for b in best:
            a.axvline(b, color="grey", lw=0.8)
        a.set_xlabel(step)
        a.legend(fontsize=7)
    ax.set_ylabel("macro-F1" + (" (thin: each site's validation)" if per_site else ""))
    loss_ax.set_ylabel("loss")
    return _data_uri(fig)


def roc_pr(y_true: np.ndarray, proba: np.ndarray, label_names: Sequence[str]
           ) -> tuple[str, dict[str, dict[str, float]]]:
    """One-vs-rest ROC and precision-recall curves per class, and their areas."""
    from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

    fig, (roc_ax, pr_ax) = _figure(9, 3.8, ncols=2)
    areas: dict[str, dict[str, float]] = {}
    for k, label in enumerate(label_names):
        positive = y_true == k
        if positive.all() or not positive.any():
            continue
        fpr, tpr, _ = roc_curve(positive, proba[:, k])
        precision, recall, _ = precision_recall_curve(positive, proba[:, k])
        areas[label] = {"roc_auc": float(auc(fpr, tpr)),
                        "average_precision": float(average_precision_score(positive,
                                                                           proba[:, k])),
                        "prevalence": float(positive.mean())}
        roc_ax.plot(fpr, tpr, label=f"{label} (AUC {areas[label]['roc_auc']:.3f})")
        pr_ax.plot(recall, precision,
                   label=f"{label} (AP {areas[label]['average_precision']:.3f})")
    roc_ax.plot([0, 1], [0, 1], ":", color="grey")
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    pr_ax.set(xlabel="recall", ylabel="precision", title="precision-recall")
    for a in (roc_ax, pr_ax):
        a.legend(fontsize=7)
    return _data_uri(fig), areas


def confusion(cm: np.ndarray, label_names: Sequence[str]) -> str:
    """Counts, shaded by the share of each true class."""
    cm = np.asarray(cm)
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, (ax,) = _figure(5.2, 4.4)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if share[i, j] > 0.5 else "black", fontsize=9)
    ax.set_xticks(range(len(label_names)), label_names, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(len(label_names)), label_names, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true")
    return _data_uri(fig)


def embedding_map(points: np.ndarray, colourings: dict[str, np.ndarray], title: str) -> str:
    """2-D embedding, one panel per colouring (e.g. subtype, site)."""
    fig, axes = _figure(5 * len(colourings), 4.4, ncols=len(colourings))
    for ax, (name, groups) in zip(axes, colourings.items(), strict=True):
        for g in sorted(set(groups.tolist()), key=str):
            sel = groups == g
            ax.scatter(points[sel, 0], points[sel, 1], s=9, label=f"{g} ({sel.sum()})")
        ax.set_title(f"{title}, coloured by {name}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=6, markerscale=1.2, ncols=2 if len(set(groups.tolist())) > 8 else 1)
    return _data_uri(fig)


def heatmap(matrix: np.ndarray, rows: Sequence[str], cols: Sequence[str], title: str,
            fmt: str = "{:.2f}") -> str:
    fig, (ax,) = _figure(1.6 + 1.1 * len(cols), 1.2 + 0.5 * len(rows))
    ax.imshow(matrix, cmap="viridis", aspect="auto")
    for i in range(len(rows)):
        for j in range(len(cols)):
            ax.text(j, i, fmt.format(matrix[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if matrix[i, j] < matrix.max() * 0.6 else "black")
    ax.set_xticks(range(len(cols)), cols, fontsize=8, rotation=20)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_title(title, fontsize=9)
    return _data_uri(fig)


def bars(values: dict[str, float], title: str, xlabel: str) -> str:
    fig, (ax,) = _figure(5.5, 0.9 + 0.35 * len(values))
    names = list(values)
    ax.barh(names, [values[n] for n in names])
    ax.invert_yaxis()
    ax.set(title=title, xlabel=xlabel)
    return _data_uri(fig)
