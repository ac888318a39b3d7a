"""Explanation: integrated-gradients attributions of one patient's prediction."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Request

from server.serving import schemas as s
from server.serving.api.bodies import INPUT_PROBLEMS
from server.serving.api.deps import (
    AuditDep,
    MetricsDep,
    PredictorDep,
    Researcher,
    SettingsDep,
)
from server.serving.api.records import audit_entry, count_predictions, model_ref
from server.serving.predictor import InputError

router = APIRouter(prefix="/v1", tags=["prediction"])


@router.post("/explain", response_model=s.ExplainResponse, responses=INPUT_PROBLEMS)
def explain_endpoint(body: s.ExplainRequest, request: Request, who: Researcher,
                     predictor: PredictorDep, settings: SettingsDep, audit: AuditDep,
                     prometheus: MetricsDep) -> s.ExplainResponse:
    """Integrated-gradients attributions per feature and per modality, with the model's
    learned modality weights (roles: researcher)."""
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
        learned_modality_weights=exp.learned_modality_weights)
