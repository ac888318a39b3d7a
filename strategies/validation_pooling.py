"""Pool the sites' validation aggregates into one set of validation metrics.

Flower's default averages metrics weighted by examples; summing the sites' loss sums and
confusion counts instead gives exactly the metrics of the pooled validation patients
(the macro-F1 of the pooled patients is not the mean of the sites' macro-F1s).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from flwr.app import MetricRecord, RecordDict

from common.metrics import macro_f1
from common.protocol import (
    CONFUSION,
    NUM_EXAMPLES,
    VAL_ACCURACY,
    VAL_EXAMPLES,
    VAL_F1_MACRO,
    VAL_LOSS,
    SiteMetrics,
)


@dataclass
class ValidationSummary:
    """Validation metrics of some patients (one site's, or several sites' pooled)."""

    n: int
    loss: float
    accuracy: float
    f1_macro: float
    confusion: np.ndarray  # int64 [C, C], rows = true class

    def to_record(self) -> MetricRecord:
        return MetricRecord({
            NUM_EXAMPLES: self.n,
            VAL_EXAMPLES: self.n,
            VAL_LOSS: self.loss,
            VAL_ACCURACY: self.accuracy,
            VAL_F1_MACRO: self.f1_macro,
            CONFUSION: [int(v) for v in self.confusion.ravel()],
        })

    @classmethod
    def from_record(cls, rec: MetricRecord) -> ValidationSummary | None:
        """The summary in a pooled record, or None when no site validated."""
        if int(rec.get(VAL_EXAMPLES, 0)) == 0:  # type: ignore[arg-type]
            return None
        metrics = SiteMetrics.from_record(rec)
        assert metrics.confusion is not None
        return cls(int(rec[VAL_EXAMPLES]), float(rec[VAL_LOSS]),  # type: ignore[arg-type]
                   float(rec[VAL_ACCURACY]), float(rec[VAL_F1_MACRO]),  # type: ignore[arg-type]
                   metrics.confusion)

    def as_dict(self) -> dict[str, float]:
        """``loss``, ``accuracy`` and ``f1_macro``: the run record's form."""
        return {"loss": self.loss, "accuracy": self.accuracy, "f1_macro": self.f1_macro}


def pool_site_metrics(reports: Iterable[SiteMetrics]) -> ValidationSummary | None:
    """Sum the reports' validation loss sums and confusion counts; None without any."""
    n = 0
    loss_sum = 0.0
    confusion: np.ndarray | None = None
    for m in reports:
        if not m.has_validation:
            continue
        assert m.confusion is not None and m.val_examples is not None
        n += m.val_examples
        loss_sum += m.val_loss_sum
        confusion = m.confusion.copy() if confusion is None else confusion + m.confusion
    if confusion is None or n == 0:
        return None
    return ValidationSummary(n=n, loss=loss_sum / n, accuracy=float(np.trace(confusion) / n),
                             f1_macro=macro_f1(confusion), confusion=confusion)


def pool_validation(records: list[RecordDict]) -> MetricRecord:
    """Pooled validation metrics of reply contents, as a record (see :class:`ValidationSummary`).

    Without any validation patients: only ``num-examples`` and ``val-examples``, both 0.
    """
    reports = [SiteMetrics.of_reply(r) for r in records]
    pooled = pool_site_metrics(m for m in reports if m is not None)
    if pooled is None:
        return MetricRecord({NUM_EXAMPLES: 0, VAL_EXAMPLES: 0})
    return pooled.to_record()


def pool_evaluation(records: list[RecordDict], weight_key: str = NUM_EXAMPLES) -> MetricRecord:
    """Flower ``evaluate_metrics_aggr_fn``: see :func:`pool_validation`."""
    del weight_key  # pooled metrics count validation patients, whatever the weight key
    return pool_validation(records)
