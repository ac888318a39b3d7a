"""Classification metrics shared by every evaluation path (baselines, centralized, federated).

All metrics derive from the full ``C x C`` confusion matrix in schema label order, so a
site whose test set lacks a class still reports every class (with support 0) and the
numbers from different code paths are computed in exactly one way.

Conventions (identical to scikit-learn's with ``zero_division=0``):

* precision / recall / F1 of a class are 0 where their denominator is 0;
* ``f1_macro`` averages over the classes that occur in ``y_true`` or in the predictions;
  a class absent from both has no defined F1 and is left out rather than counted as 0;
* ``balanced_accuracy`` is the mean recall over the classes present in ``y_true``;
* ``roc_auc_ovr`` is the AUC of class 1 when there are two label names, otherwise the
  mean one-vs-rest AUC over the classes present in ``y_true``; it is ``nan`` when
  ``y_true`` holds fewer than two classes (an AUC needs positives and negatives).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

logger = logging.getLogger(__name__)

METRIC_KEYS = ("accuracy", "balanced_accuracy", "f1_macro", "f1_weighted", "roc_auc_ovr")


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Elementwise ``num / den`` with 0 where ``den`` is 0 (``zero_division=0``)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros_like(num)
    np.divide(num, den, out=out, where=den > 0)
    return out


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """``int64 [C, C]`` counts, rows = true class, columns = predicted class."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return cm


def f1_per_class(cm: np.ndarray) -> np.ndarray:
    """F1 of every class of confusion matrix ``cm``; 0 for a class absent from both axes."""
    cm = np.asarray(cm)
    # 2TP / (2TP + FP + FN) equals 2PR / (P + R) and is 0, not 0/0, when TP = 0.
    return _safe_div(2 * np.diag(cm), cm.sum(axis=1) + cm.sum(axis=0))


def macro_f1(cm: np.ndarray) -> float:
    """Mean F1 over the classes that occur in ``cm`` as truth or as prediction.

    A class absent from both has no defined F1 and is left out (scikit-learn's macro
    average over the labels present); an empty matrix gives 0.0.
    """
    cm = np.asarray(cm)
    present = (cm.sum(axis=1) + cm.sum(axis=0)) > 0
    return float(f1_per_class(cm)[present].mean()) if present.any() else 0.0


def roc_auc_ovr(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Binary AUC of class 1, or macro one-vs-rest AUC over the classes in ``y_true``.

    Returns ``nan`` when ``y_true`` has fewer than two distinct classes.
    """
    y_true = np.asarray(y_true)
    present = np.unique(y_true)
    if len(present) < 2:
        return float("nan")
    if proba.shape[1] == 2:
        return float(roc_auc_score(y_true == 1, proba[:, 1]))
    # Per-class binary AUCs: sklearn's multiclass path raises when a class is absent
    # from y_true, and an absent class has no positives, so its AUC is undefined anyway.
    aucs = [roc_auc_score(y_true == k, proba[:, k]) for k in present]
    return float(np.mean(aucs))


def classification_metrics(
    y_true: np.ndarray, proba: np.ndarray, label_names: Sequence[str]
) -> dict[str, Any]:
    """Metrics of argmax predictions from class probabilities ``proba [n, C]``.

    Returns the :data:`METRIC_KEYS` as floats, ``per_class`` (label name ->
    precision, recall, f1, support), ``confusion_matrix`` (list of lists, rows = true
    class, all classes in label order) and ``n``. See the module docstring for the
    averaging conventions.
    """
    y_true = np.asarray(y_true)
    proba = np.asarray(proba, dtype=np.float64)
    n_classes = len(label_names)
    if n_classes < 2:
        raise ValueError(f"need at least 2 label names, got {list(label_names)}")
    if y_true.ndim != 1 or len(y_true) == 0:
        raise ValueError(f"y_true must be a non-empty 1-d array, got shape {y_true.shape}")
    if proba.shape != (len(y_true), n_classes):
        raise ValueError(f"proba shape {proba.shape} != ({len(y_true)}, {n_classes})")
    if not np.issubdtype(y_true.dtype, np.integer):
        raise ValueError(f"y_true must hold integer class indices, got dtype {y_true.dtype}")
    if y_true.min() < 0 or y_true.max() >= n_classes:
        raise ValueError(f"y_true values must lie in [0, {n_classes}), got {np.unique(y_true)}")
    if not np.isfinite(proba).all():
        raise ValueError("proba contains NaN or infinite values")

    y_pred = proba.argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred, n_classes)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)

    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = f1_per_class(cm)

    in_true = support > 0
    n = len(y_true)
    out: dict[str, Any] = {
        "accuracy": float(tp.sum() / n),
        "balanced_accuracy": float(recall[in_true].mean()),
        "f1_macro": macro_f1(cm),
        "f1_weighted": float((f1 * support).sum() / n),
        "roc_auc_ovr": roc_auc_ovr(y_true, proba),
    }
    out["per_class"] = {
        name: {
            "precision": float(precision[k]),
            "recall": float(recall[k]),
            "f1": float(f1[k]),
            "support": int(support[k]),
        }
        for k, name in enumerate(label_names)
    }
    out["confusion_matrix"] = cm.tolist()
    out["n"] = int(n)
    return out


def summarize(values: Sequence[float]) -> tuple[float, float]:
    """``(mean, sample std)`` with ``ddof=1``; the std of a single value is 0.0."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError("summarize needs a non-empty sequence of numbers")
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return float(arr.mean()), std


def _fmt3(x: float) -> str:
    if math.isnan(x):
        return "nan"
    s = f"{x:.3f}"
    # Benchmark tables drop the leading zero of values in (-1, 1): ".812", "-.004".
    if s.startswith("0."):
        return s[1:]
    if s.startswith("-0."):
        return "-" + s[2:]
    return s


def format_mean_std(values: Sequence[float]) -> str:
    """``".812 ± .014"``: mean and sample std with 3 decimals, leading zero dropped."""
    mean, std = summarize(values)
    return f"{_fmt3(mean)} ± {_fmt3(std)}"
