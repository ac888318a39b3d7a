"""Request bodies the prediction endpoints parse themselves, and how OpenAPI shows them.

``/v1/predict``, ``/v1/predict/batch`` and ``/v1/explain`` validate their JSON with
pydantic's own parser (faster than FastAPI's ``json.loads`` and then validating the
objects) and refuse repeated keys, and the batch endpoint also accepts a CSV upload, so
FastAPI does not see their request models. The
routes declare the bodies with ``openapi_extra``; :func:`document_parsed_bodies` adds
the models those declarations refer to.
"""

from __future__ import annotations

import json
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
PARSED_BODIES: tuple[type[BaseModel], ...] = (s.PredictRequest, s.BatchPredictRequest,
                                             s.ExplainRequest)

INPUT_PROBLEMS: dict[int | str, dict[str, Any]] = {
    422: {"model": s.ErrorResponse, "description": "Invalid input (names the field)"},
    413: {"model": s.ErrorResponse, "description": "Batch or body too large"},
}


async def parse_json_body(model: type[_M], request: Request,
                          max_patients: int | None = None) -> _M:
    """The body validated as ``model``; errors become FastAPI's 422 with ``body``
    locations. Duplicate keys are refused (the content type was checked by the API's
    middleware); with ``max_patients``, a body holding more patients is refused (413)
    before it is parsed."""
    raw = await request.body()
    if max_patients is not None:
        # Every patient has exactly one "modalities" key: a count at memory speed
        # instead of parsing tens of megabytes only to refuse them.
        check_batch_size(raw.count(b'"modalities"'), max_patients, ["body", "patients"])
    try:
        if len(raw) > _INLINE_PARSE_BYTES:  # keep the event loop free for big batches
            parsed = await run_in_threadpool(model.model_validate_json, raw)
        else:
            parsed = model.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from exc
    if _raw_key_count(raw) != _parsed_key_count(parsed):
        # Counts differ when a key repeats (pydantic keeps the last value) or the JSON is
        # spaced unusually: only then pay for the exact, slower check.
        await run_in_threadpool(_refuse_duplicate_keys, raw)
    return parsed


def _raw_key_count(raw: bytes) -> int:
    # A key is a string followed by a colon; values never are (strings containing '":'
    # only make the counts differ, which costs the exact check, not a wrong answer).
    return sum(raw.count(sep) for sep in (b'":', b'" :', b'"\n:', b'"\t:', b'"\r:'))


_SCALARS = frozenset({float, int, str, bool, type(None)})


def _parsed_key_count(value: Any) -> int:
    if isinstance(value, BaseModel):
        return sum(1 + _parsed_key_count(getattr(value, f)) for f in value.model_fields_set)
    if isinstance(value, dict):
        if set(map(type, value.values())) <= _SCALARS:  # a modality's features: C speed
            return len(value)
        return len(value) + sum(_parsed_key_count(v) for v in value.values()
                                if isinstance(v, dict | list | BaseModel))
    if isinstance(value, list):
        return sum(_parsed_key_count(v) for v in value)
    return 0


def _refuse_duplicate_keys(raw: bytes) -> None:
    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise InputError([{"loc": ["body"], "type": "duplicate_key",
                                   "msg": f"key {key[:100]!r} appears more than once in "
                                   "one object"}])
            seen.add(key)
        return dict(pairs)

    try:
        json.loads(raw, object_pairs_hook=unique)
    except InputError:
        raise
    except (ValueError, RecursionError):
        pass  # pydantic's parser took what the standard one does not: no key repeated


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
