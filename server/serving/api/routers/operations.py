"""Operations: liveness and readiness probes (no token), and Prometheus metrics.

``metrics_router`` carries no role check of its own: the application adds one unless the
service is configured to expose metrics publicly (a scrape over a private network).
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from server.serving import schemas as s
from server.serving.api.deps import MetricsDep, PredictorDep, StateDep
from server.serving.database import ping

probes = APIRouter(tags=["operations"])
metrics_router = APIRouter(tags=["operations"])


@probes.get("/healthz", response_model=s.Health)
def healthz() -> s.Health:
    """Liveness: the process answers (no token; reveals nothing)."""
    return s.Health(status="ok")


@probes.get("/readyz", response_model=s.Ready, responses={503: {"model": s.Ready}})
def readyz(response: Response, state: StateDep, predictor: PredictorDep) -> s.Ready:
    """Readiness: model loaded and warmed up, database reachable (no token)."""
    try:
        ping(state.engine)
    except Exception as exc:
        response.status_code = 503
        return s.Ready(status="unavailable", reason=f"database: {exc.__class__.__name__}")
    return s.Ready(status="ready", model_id=predictor.identity.model_id)


@metrics_router.get("/metrics", response_class=Response,
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text"}})
def metrics(prometheus: MetricsDep) -> Response:
    """Prometheus metrics (roles: admin, lead; or public if configured)."""
    body, ctype = prometheus.render()
    return Response(body, media_type=ctype)
