"""Explanation: integrated-gradients attributions of one patient's prediction."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from server.serving import schemas as s
from server.serving.api.bodies import INPUT_PROBLEMS, json_body, parse_json_body
from server.serving.api.deps import (
    AuditDep,
    MetricsDep,
    PredictorDep,
    Researcher,
    SettingsDep,
)
from server.serving.api.records import audit_entry, count_predictions, model_ref
from server.serving.audit_log import AuditLog
from server.serving.auth import Principal
from server.serving.predictor import InputError, Predictor
from server.serving.prometheus import ServingMetrics
from server.serving.settings import ServingSettings

router = APIRouter(prefix="/v1", tags=["prediction"])


@router.post("/explain", response_model=s.ExplainResponse, responses=INPUT_PROBLEMS,
             openapi_extra=json_body(s.ExplainRequest))
async def explain_endpoint(request: Request, who: Researcher, predictor: PredictorDep,
                           settings: SettingsDep, audit: AuditDep,
                           prometheus: MetricsDep) -> s.ExplainResponse:
    """Integrated-gradients attributions per feature and per modality, with the model's
    learned modality weights (roles: researcher)."""
    # Parsed here, like the prediction bodies: a repeated key is refused, not resolved.
    body = await parse_json_body(s.ExplainRequest, request)
    return await run_in_threadpool(_explain, body, request, who, predictor, settings, audit,
                                   prometheus)


def _explain(body: s.ExplainRequest, request: Request, who: Principal, predictor: Predictor,
             settings: ServingSettings, audit: AuditLog,
             prometheus: ServingMetrics) -> s.ExplainResponse:
    from server.serving.explain import explain

    if body.steps > settings.max_explain_steps:
        raise InputError([{"loc": ["body", "steps"], "type": "less_than_equal",
                           "msg": f"at most {settings.max_explain_steps} steps"}])
    if body.target is not None and body.target not in predictor.label_names:
        raise InputError([{"loc": ["body", "target"], "type": "unknown_class",
                           "msg": f"unknown class {body.target!r}; the model's classes "
                           f"are {predictor.label_names}"}])
    raw, x, mask = predictor.encode_raw([body.modalities])
    result = predictor.results(predictor.forward(x, mask), mask, [body.patient_id],
                               ("body",))[0]
    target = predictor.label_names.index(body.target or result.label)
    exp = explain(predictor, x, mask, raw, target=target, steps=body.steps, top_k=body.top_k)
    audit.append_many([audit_entry(request, who, predictor, "explain", {
        "patients": 1, "target": exp.target, "modalities": result.modalities_used})])
    count_predictions(prometheus, predictor, [result])
    return s.ExplainResponse(
        request_id=request.state.request_id, model=model_ref(predictor),
        prediction=s.Prediction(**asdict(result)), target=exp.target,
        target_probability=exp.target_probability,
        baseline_probability=exp.baseline_probability,
        convergence_delta=exp.convergence_delta, steps=exp.steps,
        modalities=[s.ModalityContributionOut(**asdict(c)) for c in exp.modalities],
        top_features=[s.FeatureAttributionOut(**asdict(f)) for f in exp.top_features],
        learned_modality_weights=exp.learned_modality_weights,
        completeness_gap=exp.completeness_gap, attention=exp.attention,
        attention_check=exp.attention_check)
