"""The serving API: ``create_app(settings) -> FastAPI``.

One process serves one model (the registry's production model by default), loaded and
warmed up before the first request. Every call to a model (predict, explain) and
every registry or user change is written to the audit log with the caller, the model
id and the request id; patient values are never stored or logged. Request counts,
latencies, predictions per class and errors go to ``/metrics``.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request, Response, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ValidationError
from sqlalchemy import Engine
from starlette.datastructures import UploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.serving import schemas as s
from server.serving.audit_log import AuditLog, Entry, entry
from server.serving.auth import AuthError, Principal, Role, TokenService
from server.serving.batching import MicroBatcher
from server.serving.database import open_database, ping
from server.serving.metrics import ServingMetrics, error_kind
from server.serving.predictor import InputError, PatientResult, Predictor, ServedModel
from server.serving.registry import (
    Actor,
    ModelRecord,
    Registry,
    RegistryError,
    bundle_digest,
    bundle_dir_of,
    is_registry_ref,
    verify_bundle,
)
from server.serving.settings import ServingSettings

logger = logging.getLogger(__name__)

API_VERSION = "1"
MAX_UPLOAD_FILES = 20
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_CSV_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}\.csv$")
_INLINE_PARSE_BYTES = 256 * 1024
_M = TypeVar("_M", bound=BaseModel)


@dataclass
class ServingState:
    settings: ServingSettings
    engine: Engine
    registry: Registry
    audit: AuditLog
    tokens: TokenService
    predictor: Predictor
    metrics: ServingMetrics
    batcher: MicroBatcher  # forward passes and audit records of predictions

    @property
    def model_ref(self) -> s.ModelRef:
        return s.ModelRef(**asdict(self.predictor.identity))


# ------------------------------------------------------------------------- model loading
def load_predictor(settings: ServingSettings, registry: Registry) -> Predictor:
    """The model ``settings.model`` names: a registry reference or a bundle directory."""
    from common.bundle import load_bundle

    spec = settings.model
    if is_registry_ref(spec):
        record = registry.resolve(spec, settings.model_name)
        bundle = load_bundle(verify_bundle(record))
        identity = ServedModel(record.ref, record.name, record.version, record.stage,
                               record.schema_sha256)
    else:
        bundle_dir = bundle_dir_of(spec)
        bundle = load_bundle(bundle_dir)
        identity = ServedModel(f"bundle:{bundle_digest(bundle_dir)[:12]}", "bundle", None,
                               None, bundle.schema.content_hash())
    return Predictor(bundle, identity, required_modalities=settings.required_modalities,
                     torchscript=settings.torchscript)


def _warm_up(predictor: Predictor) -> None:
    """First calls allocate and (for explain) import Captum: do it before serving."""
    from server.serving.explain import explain

    x = np.zeros((1, predictor.n_features), dtype=np.float32)
    mask = np.ones((1, len(predictor.modalities)), dtype=bool)
    for _ in range(3):
        predictor.forward(x, mask)
    explain(predictor, x, mask, x, target=0, steps=4, top_k=1)


# -------------------------------------------------------------------------- middleware
class _BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, [{"loc": ["body"], "msg": f"request body exceeds {limit} bytes",
                                "type": "too_large"}])


class ObserveMiddleware:
    """Request id, body size limit, and per-route request/latency/error metrics.

    Pure ASGI (no BaseHTTPMiddleware): it adds microseconds, not a task per request.
    """

    def __init__(self, app: ASGIApp, metrics: ServingMetrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        headers = dict(scope["headers"])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        rid = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        status = 500
        seen = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []),
                                      (b"x-request-id", rid.encode())]
            await send(message)

        async def receive_limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise _BodyTooLarge(self.max_body)
            return message

        try:
            length = int(headers.get(b"content-length", b"0") or 0)
        except ValueError:
            length = 0
        try:
            if length > self.max_body:
                await _too_large(send_with_id, self.max_body)
            else:
                await self.app(scope, receive_limited, send_with_id)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", "unmatched")
            method = scope["method"]
            self.metrics.requests.labels(label, method, str(status)).inc()
            self.metrics.latency.labels(label, method).observe(time.perf_counter() - start)
            kind = error_kind(status)
            if kind:
                self.metrics.errors.labels(label, kind).inc()


async def _too_large(send: Send, limit: int) -> None:
    body = JSONResponse(status_code=413, content={"detail": [
        {"loc": ["body"], "msg": f"request body exceeds {limit} bytes", "type": "too_large"}]})
    await send({"type": "http.response.start", "status": 413,
                "headers": body.raw_headers})
    await send({"type": "http.response.body", "body": body.body})


# ----------------------------------------------------------------------------- the app
def create_app(settings: ServingSettings, *, metrics: ServingMetrics | None = None) -> FastAPI:
    """Open the database, load and warm up the model, and build the API."""
    from server.serving.predictor import configure_torch

    configure_torch(settings.threads_per_worker())
    tokens = TokenService(settings.auth)
    engine, sessions = open_database(settings.database_url)
    audit = AuditLog(sessions, settings.audit_key)
    registry = Registry(sessions, audit)
    predictor = load_predictor(settings, registry)
    _warm_up(predictor)
    metrics = metrics or ServingMetrics()
    metrics.model_info.labels(predictor.identity.model_id,
                              predictor.identity.stage or "unregistered").set(1)
    state = ServingState(settings, engine, registry, audit, tokens, predictor, metrics,
                         MicroBatcher(predictor, audit))
    logger.info("serving %s (%d features, %d classes)", predictor.identity.model_id,
                predictor.n_features, len(predictor.label_names))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        state.batcher.close()  # finish queued predictions and their audit records
        engine.dispose()

    app = FastAPI(
        lifespan=lifespan,
        title="Cancer Alpha inference service",
        version=API_VERSION,
        description="Multi-omics cancer subtype prediction with the consortium's global "
        "model. Bearer JWT required (roles: admin, lead, researcher, site); no patient data "
        "is stored.",
        responses={401: {"model": s.ErrorResponse, "description": "Missing or invalid token"},
                   403: {"model": s.ErrorResponse, "description": "Role not allowed"}},
    )
    app.state.serving = state
    app.add_middleware(ObserveMiddleware, metrics=metrics, max_body_bytes=settings.max_body_bytes)
    _install_error_handlers(app)
    _install_routes(app, state)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def app_from_env() -> FastAPI:
    """Uvicorn factory for worker processes (settings handed over by ``serve``)."""
    settings = ServingSettings.from_worker_env()
    logging.basicConfig(level=settings.log_level.upper(), format="%(levelname)s %(name)s: "
                        "%(message)s")
    return create_app(settings)


# ------------------------------------------------------------------------------- auth
_bearer = HTTPBearer(auto_error=False, description="JWT from `cancer-alpha auth issue-token`")


def require(state: ServingState, *roles: Role) -> Any:
    """Dependency: the caller's principal if authenticated with one of ``roles``."""
    allowed = frozenset(roles)
    names = sorted(r.value for r in roles)

    # async: FastAPI would run a plain function in its thread pool, a hop per request.
    async def dependency(
        request: Request,
        cred: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    ) -> Principal:
        if cred is None:
            raise HTTPException(401, "missing bearer token",
                                headers={"WWW-Authenticate": "Bearer"})
        try:
            principal = state.tokens.verify(cred.credentials)
        except AuthError as exc:
            raise HTTPException(401, str(exc), headers={
                "WWW-Authenticate": 'Bearer error="invalid_token"'}) from exc
        if principal.role not in allowed:
            raise HTTPException(403, f"role {principal.role.value!r} may not use this "
                                f"endpoint (allowed: {', '.join(names)})")
        request.state.principal = principal
        return principal

    return dependency


# ----------------------------------------------------------------------------- routes
def _install_routes(app: FastAPI, state: ServingState) -> None:
    settings = state.settings
    predictor = state.predictor
    researcher = Depends(require(state, Role.RESEARCHER))
    readers = Depends(require(state, Role.RESEARCHER, Role.LEAD, Role.ADMIN))
    leads = Depends(require(state, Role.LEAD, Role.ADMIN))
    admin = Depends(require(state, Role.ADMIN))
    problems = {422: {"model": s.ErrorResponse, "description": "Invalid input (names the field)"},
                413: {"model": s.ErrorResponse, "description": "Batch or body too large"}}

    def audit_entry(request: Request, who: Principal, action: str,
                    detail: dict[str, Any]) -> Entry:
        return entry(actor=who.subject, role=who.role.value, action=action,
                     model_id=predictor.identity.model_id,
                     request_id=request.state.request_id, detail=detail)

    def count(results: list[PatientResult]) -> None:
        for r in results:
            state.metrics.predictions.labels(r.label, predictor.identity.model_id).inc()

    @app.get("/healthz", response_model=s.Health, tags=["operations"])
    def healthz() -> s.Health:
        """Liveness: the process answers (no token; reveals nothing)."""
        return s.Health(status="ok")

    @app.get("/readyz", response_model=s.Ready, tags=["operations"],
             responses={503: {"model": s.Ready}})
    def readyz(response: Response) -> s.Ready:
        """Readiness: model loaded and warmed up, database reachable (no token)."""
        try:
            ping(state.engine)
        except Exception as exc:
            response.status_code = 503
            return s.Ready(status="unavailable", reason=f"database: {exc.__class__.__name__}")
        return s.Ready(status="ready", model_id=predictor.identity.model_id)

    metrics_deps = [] if settings.metrics_public else [leads]

    @app.get("/metrics", tags=["operations"], dependencies=metrics_deps,
             response_class=Response,
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text"}})
    def metrics() -> Response:
        """Prometheus metrics (roles: admin, lead; or public if configured)."""
        body, ctype = state.metrics.render()
        return Response(body, media_type=ctype)

    @app.get("/v1/schema", response_model=s.SchemaResponse, tags=["prediction"])
    def schema(who: Principal = readers) -> s.SchemaResponse:
        """The served model's modalities, their feature names and the class names."""
        return s.SchemaResponse(
            model=state.model_ref, label_names=predictor.label_names,
            modalities={m: list(f) for m, f in predictor.features.items()},
            required_modalities=list(predictor.required), max_batch=settings.max_batch)

    @app.post("/v1/predict", response_model=s.PredictResponse, tags=["prediction"],
              responses=problems, openapi_extra=_json_body("PredictRequest"))
    async def predict(request: Request, who: Principal = researcher) -> Response:
        """Class probabilities for one patient (roles: researcher)."""
        body = await _parse(s.PredictRequest, request)
        x, mask = predictor.encode([body.modalities])
        used = [m for m, on in zip(predictor.modalities, mask[0], strict=True) if on]
        proba = await state.batcher.run(x, mask, audit_entry(
            request, who, "predict", {"patients": 1, "modalities": used}))
        results = predictor.results(proba, mask, [body.patient_id], ("body",))
        count(results)
        return _json(s.PredictResponse(request_id=request.state.request_id,
                                       model=state.model_ref,
                                       prediction=s.Prediction(**asdict(results[0]))))

    @app.post("/v1/predict/batch", response_model=s.BatchPredictResponse, tags=["prediction"],
              responses=problems, openapi_extra=_BATCH_BODY)
    async def predict_batch(request: Request, who: Principal = researcher) -> Response:
        """Many patients: JSON (``{"patients": [...]}``) or a CSV upload in the dataset
        format (multipart, one ``<modality>.csv`` file per modality; roles: researcher)."""
        warnings: list[str] = []
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            x, mask, ids, warnings = await _read_upload(request, state)
            loc: tuple[str, ...] = ("body", "files")
            source = "csv"
        else:
            req = await _parse(s.BatchPredictRequest, request)
            _check_batch_size(len(req.patients), settings.max_batch, ["body", "patients"])
            x, mask = await run_in_threadpool(
                predictor.encode, [p.modalities for p in req.patients], ("body", "patients"),
                indexed=True)
            ids = [p.patient_id for p in req.patients]
            loc, source = ("body", "patients"), "json"
        proba = await state.batcher.run(x, mask, audit_entry(
            request, who, "predict_batch", {"patients": len(x), "source": source}))
        results = predictor.results(proba, mask, ids, loc, indexed=True)
        count(results)
        return _json(s.BatchPredictResponse(
            request_id=request.state.request_id, model=state.model_ref,
            predictions=[s.Prediction(**asdict(r)) for r in results], warnings=warnings))

    @app.post("/v1/explain", response_model=s.ExplainResponse, tags=["prediction"],
              responses=problems)
    def explain_endpoint(body: s.ExplainRequest, request: Request,
                         who: Principal = researcher) -> s.ExplainResponse:
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
        exp = explain(predictor, x, mask, raw, target=target, steps=body.steps,
                      top_k=body.top_k)
        state.audit.append_many([audit_entry(request, who, "explain", {
            "patients": 1, "target": exp.target, "modalities": result.modalities_used})])
        count([result])
        return s.ExplainResponse(
            request_id=request.state.request_id, model=state.model_ref,
            prediction=s.Prediction(**asdict(result)), target=exp.target,
            target_probability=exp.target_probability,
            baseline_probability=exp.baseline_probability,
            convergence_delta=exp.convergence_delta, steps=exp.steps,
            modalities=[s.ModalityContributionOut(**asdict(c)) for c in exp.modalities],
            top_features=[s.FeatureAttributionOut(**asdict(f)) for f in exp.top_features],
            learned_modality_weights=exp.learned_modality_weights)

    def model_info(rec: ModelRecord) -> s.ModelInfo:
        d = rec.as_dict()
        d.pop("bundle_path")  # server paths are not the callers' business
        return s.ModelInfo(**d, serving=rec.ref == predictor.identity.model_id)

    @app.get("/v1/models", response_model=s.ModelsResponse, tags=["registry"])
    def models(who: Principal = leads) -> s.ModelsResponse:
        """Every registered model with its lineage and stage (roles: admin, lead)."""
        return s.ModelsResponse(serving=predictor.identity.model_id,
                                models=[model_info(r) for r in state.registry.models()])

    @app.get("/v1/models/{model_id}", response_model=s.ModelInfo, tags=["registry"],
             responses={404: {"model": s.ErrorResponse}})
    def show_model(model_id: str, who: Principal = leads) -> s.ModelInfo:
        """One model's lineage (roles: admin, lead)."""
        try:
            return model_info(state.registry.get(model_id))
        except RegistryError as exc:
            raise HTTPException(404, str(exc)) from exc

    @app.post("/v1/models/{model_id}/promote", response_model=s.ModelInfo, tags=["registry"],
              responses={404: {"model": s.ErrorResponse}})
    def promote(model_id: str, body: s.PromoteRequest, request: Request,
                who: Principal = leads) -> s.ModelInfo:
        """Move a model to a stage; production archives the previous one. Audited. A
        running server keeps its model until restarted (roles: admin, lead)."""
        try:
            rec = state.registry.promote(model_id, stage=body.stage,
                                         actor=Actor(who.subject, who.role.value),
                                         request_id=request.state.request_id)
        except RegistryError as exc:
            raise HTTPException(404 if "no model" in str(exc) else 422, str(exc)) from exc
        return model_info(rec)

    @app.post("/v1/tokens", response_model=s.TokenResponse, tags=["users"])
    def issue_token(body: s.TokenRequest, request: Request,
                    who: Principal = admin) -> s.TokenResponse:
        """Issue a token for a user (roles: admin). Audited (the token itself is not)."""
        if not state.tokens.can_issue:
            raise HTTPException(409, "this server holds no signing key (verify-only)")
        ttl = body.ttl_seconds or settings.auth.token_ttl_seconds
        if ttl > settings.auth.max_token_ttl_seconds:
            raise InputError([{"loc": ["body", "ttl_seconds"], "type": "less_than_equal",
                               "msg": f"at most {settings.auth.max_token_ttl_seconds} s"}])
        token = state.tokens.issue(body.subject, body.role, ttl)
        state.audit.append(actor=who.subject, role=who.role.value, action="auth.issue_token",
                           request_id=request.state.request_id,
                           detail={"subject": body.subject, "role": body.role, "ttl": ttl})
        return s.TokenResponse(token=token, subject=body.subject, role=body.role,
                               expires_in=ttl)


async def _read_upload(
    request: Request, state: ServingState
) -> tuple[np.ndarray, np.ndarray, list[str | None], list[str]]:
    """A CSV upload as standardized ``x``, ``mask``, patient ids and dataset warnings.

    The files are written to a private temporary directory and read with the project's
    dataset loader (the same validation as ``site check``)."""
    from common.dataset import inspect_dataset

    try:
        form = await request.form(max_files=MAX_UPLOAD_FILES, max_fields=MAX_UPLOAD_FILES)
    except HTTPException:  # body too large
        raise
    except Exception as exc:  # the parsers' errors all mean a malformed body
        raise InputError([{"loc": ["body"], "type": "multipart",
                           "msg": f"malformed multipart body ({exc})"}]) from exc
    try:
        uploads = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if not uploads:
            raise InputError([{"loc": ["body", "files"], "type": "missing",
                               "msg": "no file uploaded: send one <modality>.csv per modality"}])
        with tempfile.TemporaryDirectory(prefix="cancer-alpha-upload-") as tmp:
            names: set[str] = set()
            for up in uploads:
                name = Path(up.filename or "").name
                if not _CSV_NAME.match(name) or name in names:
                    raise InputError([{"loc": ["body", "files", up.filename or ""],
                                       "type": "value_error",
                                       "msg": "file names must be distinct <modality>.csv "
                                       "names (letters, digits, _ . -)"}])
                names.add(name)
                (Path(tmp) / name).write_bytes(await up.read())
            data, report = await run_in_threadpool(
                inspect_dataset, tmp, schema=state.predictor.schema, require_labels=False)
    finally:
        await form.close()
    if data is None:
        raise InputError([_finding_error(f) for f in report.errors][:20])
    _check_batch_size(data.n, state.settings.max_batch, ["body", "files"])
    x, mask = await run_in_threadpool(state.predictor.prepare_data, data)
    return x, mask, [str(p) for p in data.patient_ids], [str(f) for f in report.warnings]


async def _parse(model: type[_M], request: Request) -> _M:
    """Validate the JSON body with pydantic's own parser (faster than ``json.loads`` and
    then validating the objects); errors become FastAPI's 422 with ``body`` locations."""
    raw = await request.body()
    try:
        if len(raw) > _INLINE_PARSE_BYTES:  # keep the event loop free for big batches
            return await run_in_threadpool(model.model_validate_json, raw)
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from exc


def _json(model: BaseModel) -> Response:
    """Serialize a response model directly (it was built from validated values)."""
    return Response(model.model_dump_json(), media_type="application/json")


def _finding_error(f: Any) -> dict[str, Any]:
    loc: list[str | int] = ["body", "files"]
    loc += [x for x in (f.file, f.column) if x is not None]
    if f.row is not None:
        loc.append(f"row {f.row}")
    return {"loc": loc, "msg": str(f), "type": "dataset"}


def _check_batch_size(n: int, limit: int, loc: list[str | int]) -> None:
    if n > limit:
        raise InputError([{"loc": loc, "type": "too_large",
                           "msg": f"{n} patients in one request; at most {limit}"}],
                         status_code=413)


# ------------------------------------------------------------------------ error handling
def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Only location, message and type: the default echoes the input (patient values,
        # and NaN, which JSON cannot carry: that would turn a 422 into a 500).
        return JSONResponse(status_code=422, content={"detail": [
            {"loc": [p if isinstance(p, int) else str(p) for p in e.get("loc", ())],
             "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in exc.errors()]})

    @app.exception_handler(InputError)
    async def _input(request: Request, exc: InputError) -> JSONResponse:
        return JSONResponse(status_code=exc.status_code, content={"detail": exc.errors})

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        rid = request.scope.get("state", {}).get("request_id", "")
        logger.error("request %s failed: %s", rid, exc.__class__.__name__, exc_info=exc)
        return JSONResponse(status_code=500, content={
            "detail": f"internal error (request id {rid})"})


# --------------------------------------------------------------------------------- openapi
def _json_body(name: str) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}}}


_BATCH_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/BatchPredictRequest"}},
    "multipart/form-data": {"schema": {
        "type": "object", "required": ["files"],
        "properties": {"files": {"type": "array", "items": {"type": "string",
                                                              "format": "binary"},
                                 "description": "One <modality>.csv per modality, in the "
                                 "dataset format (first column patient id, header row)."}}}},
}}}


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus the request models whose bodies the endpoints parse
    themselves (for speed, and to accept both JSON and CSV uploads on the batch endpoint),
    which FastAPI therefore does not see."""
    if app.openapi_schema:
        return app.openapi_schema
    spec = get_openapi(title=app.title, version=app.version, description=app.description,
                       routes=app.routes)
    components = spec.setdefault("components", {}).setdefault("schemas", {})
    for model in (s.PredictRequest, s.BatchPredictRequest):
        extra = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, definition in extra.pop("$defs", {}).items():
            components.setdefault(name, definition)
        components.setdefault(model.__name__, extra)
    app.openapi_schema = spec
    return spec
