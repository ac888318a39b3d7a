"""Explanation: integrated-gradients attributions of one patient's prediction.

The explainer answers from its cache or computes on its own thread; the audit record
goes through the micro-batcher, in the transaction of the next batch of predictions.
"""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Request, Response

from server.serving import schemas as s
from server.serving.api.bodies import INPUT_PROBLEMS, json_body, json_response, parse_json_body
from server.serving.api.deps import (
    BatcherDep,
    ExplainerDep,
    MetricsDep,
    PredictorDep,
    Researcher,
    SettingsDep,
)
from server.serving.api.records import (
    audit_entry,
    count_predictions,
    model_ref,
    prediction_of,
)
from server.serving.predictor import InputError

router = APIRouter(prefix="/v1", tags=["prediction"])


@router.post("/explain", response_model=s.ExplainResponse, responses=INPUT_PROBLEMS,
             openapi_extra=json_body(s.ExplainRequest))
async def explain_endpoint(request: Request, who: Researcher, predictor: PredictorDep,
                           settings: SettingsDep, explainer: ExplainerDep,
                           batcher: BatcherDep, prometheus: MetricsDep) -> Response:
    """Integrated-gradients attributions per feature and per modality, with the model's
    learned modality weights (roles: researcher)."""
    # Parsed here, like the prediction bodies: a repeated key is refused, not resolved.
    body = await parse_json_body(s.ExplainRequest, request)
    if body.steps > settings.max_explain_steps:
        raise InputError([{"loc": ["body", "steps"], "type": "less_than_equal",
                           "msg": f"at most {settings.max_explain_steps} steps"}])
    if body.target is not None and body.target not in predictor.label_names:
        raise InputError([{"loc": ["body", "target"], "type": "unknown_class",
                           "msg": f"unknown class {body.target!r}; the model's classes "
                           f"are {predictor.label_names}"}])
    raw, x, mask = predictor.encode_raw([body.modalities])
    proba, exp = await explainer.explain(raw, x, mask, target=body.target, steps=body.steps,
                                         top_k=body.top_k)
    result = predictor.results(proba, mask, [body.patient_id], ("body",))[0]
    await batcher.record(audit_entry(request, who, predictor, "explain", {
        "patients": 1, "target": exp.target, "modalities": result.modalities_used}))
    count_predictions(prometheus, predictor, [result])
    return json_response(s.ExplainResponse(
        request_id=request.state.request_id, model=model_ref(predictor),
        prediction=prediction_of(result), target=exp.target,
        target_probability=exp.target_probability,
        baseline_probability=exp.baseline_probability,
        convergence_delta=exp.convergence_delta, steps=exp.steps,
        modalities=[s.ModalityContributionOut(**asdict(c)) for c in exp.modalities],
        top_features=[s.FeatureAttributionOut(**asdict(f)) for f in exp.top_features],
        learned_modality_weights=exp.learned_modality_weights,
        completeness_gap=exp.completeness_gap, attention=exp.attention,
        attention_check=exp.attention_check))
