"""The model registry over HTTP: every model with its lineage and stage, one model, and
promotion (audited by the registry)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request

from server.serving import schemas as s
from server.serving.api.deps import (
    BatcherDep,
    ExplainerDep,
    LeadOrAdmin,
    PredictorDep,
    RegistryDep,
)
from server.serving.predictor import Predictor
from server.serving.registry import Actor, ModelRecord, RegistryError

router = APIRouter(prefix="/v1/models", tags=["registry"])
_NOT_FOUND = {404: {"model": s.ErrorResponse}}


def model_info(record: ModelRecord, predictor: Predictor) -> s.ModelInfo:
    """A registry record as callers see it (with whether this server answers with it)."""
    d = record.as_dict()
    d.pop("bundle_path")  # server paths are not the callers' business
    return s.ModelInfo(**d, serving=record.ref == predictor.identity.model_id)


@router.get("", response_model=s.ModelsResponse)
def models(who: LeadOrAdmin, registry: RegistryDep, predictor: PredictorDep
           ) -> s.ModelsResponse:
    """Every registered model with its lineage and stage (roles: admin, lead)."""
    return s.ModelsResponse(serving=predictor.identity.model_id,
                            models=[model_info(r, predictor) for r in registry.models()])


@router.get("/{model_id}", response_model=s.ModelInfo, responses=_NOT_FOUND)
def show_model(model_id: str, who: LeadOrAdmin, registry: RegistryDep,
               predictor: PredictorDep) -> s.ModelInfo:
    """One model's lineage (roles: admin, lead)."""
    try:
        return model_info(registry.get(model_id), predictor)
    except RegistryError as exc:
        raise HTTPException(404, str(exc)) from exc


@router.post("/{model_id}/promote", response_model=s.ModelInfo, responses=_NOT_FOUND)
def promote(model_id: str, body: s.PromoteRequest, request: Request, who: LeadOrAdmin,
            registry: RegistryDep, predictor: PredictorDep, batcher: BatcherDep,
            explainer: ExplainerDep) -> s.ModelInfo:
    """Move a model to a stage; production archives the previous one. Audited. A
    running server keeps its model until restarted; a new production model empties
    the prediction and explanation caches (roles: admin, lead)."""
    try:
        record = registry.promote(model_id, stage=body.stage,
                                  actor=Actor(who.subject, who.role.value),
                                  request_id=request.state.request_id)
    except RegistryError as exc:
        raise HTTPException(404 if "no model" in str(exc) else 422, str(exc)) from exc
    if body.stage == "production":
        if batcher.cache is not None:
            batcher.cache.clear()
        if explainer.cache is not None:
            explainer.cache.clear()
    return model_info(record, predictor)
