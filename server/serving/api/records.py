"""What a call to the model leaves behind: the model named in the answer, the audit
entry (caller, model, request id; never patient values) and the prediction counts."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

from fastapi import Request

from server.serving import schemas as s
from server.serving.audit_log import Entry, entry
from server.serving.auth import Principal
from server.serving.predictor import PatientResult, Predictor, ServedModel
from server.serving.prometheus import ServingMetrics


def model_ref(predictor: Predictor) -> s.ModelRef:
    """The served model, as every answer names it."""
    return _model_ref_of(predictor.identity)


@functools.lru_cache(maxsize=16)
def _model_ref_of(identity: ServedModel) -> s.ModelRef:
    return s.ModelRef(**asdict(identity))  # one per model, not one per request


def prediction_of(result: PatientResult) -> s.Prediction:
    """A patient's result as answered. Built without validation: the predictor made
    every field with its declared type, and validating ~10 values per patient again
    costs more than the forward pass of a small model."""
    return s.Prediction.model_construct(
        patient_id=result.patient_id, label=result.label,
        probabilities=result.probabilities, modalities_used=result.modalities_used,
        modalities_missing=result.modalities_missing)


def audit_entry(request: Request, who: Principal, predictor: Predictor, action: str,
                detail: dict[str, Any]) -> Entry:
    """The audit entry of one call to the served model."""
    return entry(actor=who.subject, role=who.role.value, action=action,
                 model_id=predictor.identity.model_id,
                 request_id=request.state.request_id, detail=detail)


def count_predictions(metrics: ServingMetrics, predictor: Predictor,
                      results: Iterable[PatientResult]) -> None:
    """One ``predictions_total`` increment per patient, by predicted class."""
    for r in results:
        metrics.predictions.labels(r.label, predictor.identity.model_id).inc()
