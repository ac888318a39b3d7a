"""Request bodies the prediction endpoints parse themselves, and how OpenAPI shows them.

``/v1/predict`` and ``/v1/predict/batch`` validate their JSON with pydantic's own parser
(faster than FastAPI's ``json.loads`` and then validating the objects), and the batch
endpoint also accepts a CSV upload, so FastAPI does not see their request models. The
routes declare the bodies with ``openapi_extra``; :func:`document_parsed_bodies` adds
the models those declarations refer to.
"""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from server.serving import schemas as s
from server.serving.predictor import InputError

_INLINE_PARSE_BYTES = 256 * 1024
_M = TypeVar("_M", bound=BaseModel)

# The request models parsed by the endpoints rather than by FastAPI.
PARSED_BODIES: tuple[type[BaseModel], ...] = (s.PredictRequest, s.BatchPredictRequest)

INPUT_PROBLEMS: dict[int | str, dict[str, Any]] = {
    422: {"model": s.ErrorResponse, "description": "Invalid input (names the field)"},
    413: {"model": s.ErrorResponse, "description": "Batch or body too large"},
}


async def parse_json_body(model: type[_M], request: Request) -> _M:
    """The body validated as ``model``; errors become FastAPI's 422 with ``body``
    locations."""
    raw = await request.body()
    try:
        if len(raw) > _INLINE_PARSE_BYTES:  # keep the event loop free for big batches
            return await run_in_threadpool(model.model_validate_json, raw)
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from exc


def json_response(model: BaseModel) -> Response:
    """Serialize a response model directly (it was built from validated values)."""
    return Response(model.model_dump_json(), media_type="application/json")


def check_batch_size(n: int, limit: int, loc: list[str | int]) -> None:
    """413 naming ``loc`` when a request holds more than ``limit`` patients."""
    if n > limit:
        raise InputError([{"loc": loc, "type": "too_large",
                           "msg": f"{n} patients in one request; at most {limit}"}],
                         status_code=413)


# ------------------------------------------------------------------------------ openapi
def _schema_ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` of a route whose required JSON body is ``model``."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": _schema_ref(model)}}}}


BATCH_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": _schema_ref(s.BatchPredictRequest)},
    "multipart/form-data": {"schema": {
        "type": "object", "required": ["files"],
        "properties": {"files": {"type": "array", "items": {"type": "string",
                                                              "format": "binary"},
                                 "description": "One <modality>.csv per modality, in the "
                                 "dataset format (first column patient id, header row)."}}}},
}}}


def document_parsed_bodies(app: FastAPI) -> None:
    """Add :data:`PARSED_BODIES` (and the models they nest) to the components of
    FastAPI's own OpenAPI document, which the routes' ``openapi_extra`` refers to."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        spec = generate()  # FastAPI builds it once and caches it
        components = spec.setdefault("components", {}).setdefault("schemas", {})
        for model in PARSED_BODIES:
            extra = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, definition in extra.pop("$defs", {}).items():
                components.setdefault(name, definition)
            components.setdefault(model.__name__, extra)
        return spec

    app.openapi = openapi  # type: ignore[method-assign]
