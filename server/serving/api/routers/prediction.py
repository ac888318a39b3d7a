"""Prediction: the served model's input schema, one patient, and a batch (JSON or a CSV
upload in the dataset format). Forward passes go through the micro-batcher, which also
writes their audit records."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool

from server.serving import schemas as s
from server.serving.api.bodies import (
    BATCH_BODY,
    INPUT_PROBLEMS,
    check_batch_size,
    json_body,
    json_response,
    parse_json_body,
)
from server.serving.api.deps import (
    BatcherDep,
    MetricsDep,
    PredictorDep,
    Reader,
    Researcher,
    SettingsDep,
)
from server.serving.api.records import (
    audit_entry,
    count_predictions,
    model_ref,
    prediction_of,
)
from server.serving.api.uploads import read_csv_upload

router = APIRouter(prefix="/v1", tags=["prediction"])


@router.get("/schema", response_model=s.SchemaResponse)
def schema(who: Reader, predictor: PredictorDep, settings: SettingsDep) -> s.SchemaResponse:
    """The served model's modalities, their feature names and the class names."""
    return s.SchemaResponse(
        model=model_ref(predictor), label_names=predictor.label_names,
        modalities={m: list(f) for m, f in predictor.features.items()},
        required_modalities=list(predictor.required), max_batch=settings.max_batch)


@router.post("/predict", response_model=s.PredictResponse, responses=INPUT_PROBLEMS,
             openapi_extra=json_body(s.PredictRequest))
async def predict(request: Request, who: Researcher, predictor: PredictorDep,
                  batcher: BatcherDep, prometheus: MetricsDep) -> Response:
    """Class probabilities for one patient (roles: researcher)."""
    body = await parse_json_body(s.PredictRequest, request)
    x, mask = predictor.encode([body.modalities])
    used = [m for m, on in zip(predictor.modalities, mask[0], strict=True) if on]
    proba = await batcher.run(x, mask, audit_entry(
        request, who, predictor, "predict", {"patients": 1, "modalities": used}))
    results = predictor.results(proba, mask, [body.patient_id], ("body",))
    count_predictions(prometheus, predictor, results)
    return json_response(s.PredictResponse(request_id=request.state.request_id,
                                           model=model_ref(predictor),
                                           prediction=prediction_of(results[0])))


@router.post("/predict/batch", response_model=s.BatchPredictResponse, responses=INPUT_PROBLEMS,
             openapi_extra=BATCH_BODY)
async def predict_batch(request: Request, who: Researcher, predictor: PredictorDep,
                        batcher: BatcherDep, prometheus: MetricsDep,
                        settings: SettingsDep) -> Response:
    """Many patients: JSON (``{"patients": [...]}``) or a CSV upload in the dataset
    format (multipart, one ``<modality>.csv`` file per modality; roles: researcher)."""
    warnings: list[str] = []
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        x, mask, ids, warnings = await read_csv_upload(request, predictor, settings.max_batch)
        loc: tuple[str, ...] = ("body", "files")
        source = "csv"
    else:
        req = await parse_json_body(s.BatchPredictRequest, request,
                                    max_patients=settings.max_batch)
        check_batch_size(len(req.patients), settings.max_batch, ["body", "patients"])
        x, mask = await run_in_threadpool(
            predictor.encode, [p.modalities for p in req.patients], ("body", "patients"),
            indexed=True)
        ids = [p.patient_id for p in req.patients]
        loc, source = ("body", "patients"), "json"
    proba = await batcher.run(x, mask, audit_entry(
        request, who, predictor, "predict_batch", {"patients": len(x), "source": source}))
    results = predictor.results(proba, mask, ids, loc, indexed=True)
    count_predictions(prometheus, predictor, results)
    return json_response(s.BatchPredictResponse(
        request_id=request.state.request_id, model=model_ref(predictor),
        predictions=[prediction_of(r) for r in results], warnings=warnings))
