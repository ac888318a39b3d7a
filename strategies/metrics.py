"""Pooled validation metrics from per-site aggregates."""

from __future__ import annotations

import math

import numpy as np
from flwr.app import MetricRecord, RecordDict

from common.protocol import NUM_EXAMPLES, VAL_EXAMPLES


def pool_evaluation(records: list[RecordDict], weight_key: str = NUM_EXAMPLES) -> MetricRecord:
    """Flower ``evaluate_metrics_aggr_fn``: see :func:`pool_validation`."""
    del weight_key  # pooled metrics count validation patients, whatever the weight key
    return pool_validation(records)


def pool_validation(records: list[RecordDict]) -> MetricRecord:
    """Sum per-site validation loss sums and confusion counts into pooled metrics.

    Flower's default averages metrics weighted by examples; summing the confusion counts
    instead gives exactly the macro-F1 of the pooled validation patients.
    """
    n = 0
    loss_sum = 0.0
    confusion: np.ndarray | None = None
    for record in records:
        m = next(iter(record.metric_records.values()))
        n += int(m[VAL_EXAMPLES])
        loss_sum += float(m["val-loss-sum"])
        c = np.asarray(m["confusion"], dtype=np.int64)
        confusion = c if confusion is None else confusion + c
    if confusion is None or n == 0:
        return MetricRecord({NUM_EXAMPLES: 0, VAL_EXAMPLES: 0})
    k = math.isqrt(confusion.size)
    cm = confusion.reshape(k, k)
    return MetricRecord({
        NUM_EXAMPLES: n,
        VAL_EXAMPLES: n,
        "val-loss": loss_sum / n,
        "val-accuracy": float(np.trace(cm) / n),
        "val-f1-macro": macro_f1(cm),
        "confusion": [int(v) for v in confusion],
    })


def macro_f1(cm: np.ndarray) -> float:
    """Macro F1 over classes that occur (as truth or prediction) in confusion matrix ``cm``."""
    tp = np.diag(cm).astype(float)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    denom = support + predicted
    present = denom > 0
    return float(np.mean(2 * tp[present] / denom[present])) if present.any() else 0.0
