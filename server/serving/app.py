"""The serving application: ``create_app(settings) -> FastAPI``.

One process serves one model (the registry's production model by default), loaded and
warmed up before the first request. Every call to a model (predict, explain) and
every registry or user change is written to the audit log with the caller, the model
id and the request id; patient values are never stored or logged. Request counts,
latencies, predictions per class and errors go to ``/metrics``.

This module only assembles: the routers, dependencies, middleware and error answers
live in :mod:`server.serving.api`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from starlette.middleware import Middleware

from server.serving import schemas as s
from server.serving.api.bodies import document_parsed_bodies
from server.serving.api.deps import ServingState, require_role
from server.serving.api.errors import EXCEPTION_HANDLERS
from server.serving.api.middleware import ObserveMiddleware
from server.serving.api.routers import explanation, models, operations, prediction, tokens
from server.serving.audit_log import open_audit_log
from server.serving.auth import Role, TokenService
from server.serving.batching import MicroBatcher
from server.serving.database import open_database
from server.serving.explainer import Explainer, ExplanationCache
from server.serving.model_loading import load_predictor, warm_up
from server.serving.prediction_cache import open_prediction_cache
from server.serving.prometheus import ServingMetrics
from server.serving.registry import Registry
from server.serving.revocation import RevocationList
from server.serving.settings import ServingSettings

logger = logging.getLogger(__name__)

API_VERSION = "1"
_DESCRIPTION = ("Multi-omics cancer subtype prediction with the consortium's global model. "
                "Bearer JWT required (roles: admin, lead, researcher, site); no patient data "
                "is stored.")
_AUTH_RESPONSES = {401: {"model": s.ErrorResponse, "description": "Missing or invalid token"},
                   403: {"model": s.ErrorResponse, "description": "Role not allowed"}}


def open_state(settings: ServingSettings, metrics: ServingMetrics | None = None
               ) -> ServingState:
    """Open the database, load and warm up the model: everything a process serves with."""
    from server.serving.predictor import configure_torch

    configure_torch(settings.threads_per_worker())
    token_service = TokenService(settings.auth)
    engine, sessions = open_database(settings.database_url)
    audit = open_audit_log(sessions, settings)
    audit.check_writable()  # a keyless or wrong-key server refuses to start
    registry = Registry(sessions, audit)
    predictor = load_predictor(settings, registry)
    warm_up(predictor)
    metrics = metrics or ServingMetrics()
    metrics.model_info.labels(predictor.identity.model_id,
                              predictor.identity.stage or "unregistered").set(1)
    logger.info("serving %s (%d features, %d classes)", predictor.identity.model_id,
                predictor.n_features, len(predictor.label_names))
    cache = open_prediction_cache(settings.prediction_cache, settings.prediction_cache_size,
                                  settings.prediction_cache_redis_url)
    batcher = MicroBatcher(predictor, audit, cache=cache,
                           on_cache_lookup=metrics.count_cache_lookups)
    explainer = Explainer(predictor, ExplanationCache() if settings.prediction_cache else None)
    return ServingState(settings, engine, registry, audit, token_service, predictor, metrics,
                        batcher, RevocationList(sessions), explainer)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    state: ServingState = app.state.serving
    state.explainer.close()
    state.batcher.close()  # finish queued predictions and their audit records
    state.engine.dispose()


def create_app(settings: ServingSettings, *, metrics: ServingMetrics | None = None) -> FastAPI:
    """Open the database, load and warm up the model, and build the API."""
    state = open_state(settings, metrics)
    app = FastAPI(
        lifespan=_lifespan,
        title="Cancer Alpha inference service",
        version=API_VERSION,
        description=_DESCRIPTION,
        responses=_AUTH_RESPONSES,
        middleware=[Middleware(ObserveMiddleware, metrics=state.metrics,
                               max_body_bytes=settings.max_body_bytes)],
        exception_handlers=EXCEPTION_HANDLERS,
    )
    app.state.serving = state
    # Prefixes belong to the routers themselves, not to include_router: the metrics'
    # route label is the matched route's own path, which an include prefix is not in.
    app.include_router(operations.probes)
    metrics_access = ([] if settings.metrics_public
                      else [Depends(require_role(Role.LEAD, Role.ADMIN))])
    app.include_router(operations.metrics_router, dependencies=metrics_access)
    app.include_router(prediction.router)
    app.include_router(explanation.router)
    app.include_router(models.router)
    app.include_router(tokens.router)
    document_parsed_bodies(app)
    return app


def app_from_env() -> FastAPI:
    """Uvicorn factory for worker processes (settings handed over by ``serve``)."""
    settings = ServingSettings.from_worker_env()
    logging.basicConfig(level=settings.log_level.upper(), format="%(levelname)s %(name)s: "
                        "%(message)s")
    return create_app(settings)
