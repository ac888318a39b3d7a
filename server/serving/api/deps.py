"""The API's dependencies: the serving state's parts, the caller, and role checks.

Endpoints declare what they need (``predictor: PredictorDep``, ``who: Researcher``);
tests replace any of these with ``app.dependency_overrides``. ``require_role`` returns
the same dependency for the same roles, so ``app.dependency_overrides[require_role(
"admin")]`` replaces the check the endpoints use.

Every dependency is ``async``: FastAPI would run a plain function in its thread pool, a
thread hop per request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cache
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine

from server.serving.audit_log import AuditLog
from server.serving.auth import AuthError, Principal, Role, TokenService
from server.serving.batching import MicroBatcher
from server.serving.explainer import Explainer
from server.serving.predictor import Predictor
from server.serving.prometheus import ServingMetrics
from server.serving.registry import Registry
from server.serving.revocation import RevocationList
from server.serving.settings import ServingSettings


@dataclass
class ServingState:
    """Everything one serving process holds, as ``app.state.serving``."""

    settings: ServingSettings
    engine: Engine
    registry: Registry
    audit: AuditLog
    tokens: TokenService
    predictor: Predictor
    metrics: ServingMetrics
    batcher: MicroBatcher  # forward passes and audit records of predictions
    revocations: RevocationList | None = None  # revoked token ids (None: none kept)
    explainer: Explainer | None = None  # explanations (built from the predictor if None)

    def __post_init__(self) -> None:
        if self.explainer is None:
            self.explainer = Explainer(self.predictor)


# ------------------------------------------------------------------ the serving state
# Each getter reads the state itself rather than through ``get_state``: FastAPI solves
# every node of the dependency tree on every request, cached or not.
def _state(request: Request) -> ServingState:
    return request.app.state.serving


async def get_state(request: Request) -> ServingState:
    return _state(request)


async def get_settings(request: Request) -> ServingSettings:
    return _state(request).settings


async def get_registry(request: Request) -> Registry:
    return _state(request).registry


async def get_predictor(request: Request) -> Predictor:
    return _state(request).predictor


async def get_batcher(request: Request) -> MicroBatcher:
    return _state(request).batcher


async def get_explainer(request: Request) -> Explainer:
    return _state(request).explainer


async def get_audit(request: Request) -> AuditLog:
    return _state(request).audit


async def get_tokens(request: Request) -> TokenService:
    return _state(request).tokens


async def get_metrics(request: Request) -> ServingMetrics:
    return _state(request).metrics


StateDep = Annotated[ServingState, Depends(get_state)]
SettingsDep = Annotated[ServingSettings, Depends(get_settings)]
RegistryDep = Annotated[Registry, Depends(get_registry)]
PredictorDep = Annotated[Predictor, Depends(get_predictor)]
BatcherDep = Annotated[MicroBatcher, Depends(get_batcher)]
ExplainerDep = Annotated[Explainer, Depends(get_explainer)]
AuditDep = Annotated[AuditLog, Depends(get_audit)]
TokensDep = Annotated[TokenService, Depends(get_tokens)]
MetricsDep = Annotated[ServingMetrics, Depends(get_metrics)]


# ------------------------------------------------------------------------- the caller
bearer = HTTPBearer(auto_error=False, description="JWT from `cancer-alpha auth issue-token`")


async def current_principal(
    request: Request,
    cred: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> Principal:
    """The caller of a verified bearer token; 401 without one."""
    if cred is None:
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    state = _state(request)
    try:
        principal = state.tokens.verify(cred.credentials)
        if state.revocations is not None and state.revocations.is_revoked(principal.token_id):
            raise AuthError("token revoked")
    except AuthError as exc:
        raise HTTPException(401, str(exc), headers={
            "WWW-Authenticate": 'Bearer error="invalid_token"'}) from exc
    return principal


RoleCheck = Callable[..., Awaitable[Principal]]


def require_role(*roles: Role | str) -> RoleCheck:
    """Dependency: the caller, if authenticated with one of ``roles``; 403 otherwise."""
    return _role_check(frozenset(Role(r) for r in roles))


@cache
def _role_check(allowed: frozenset[Role]) -> RoleCheck:
    names = ", ".join(sorted(r.value for r in allowed))

    async def role_check(
        principal: Annotated[Principal, Depends(current_principal)],
    ) -> Principal:
        if principal.role not in allowed:
            raise HTTPException(403, f"role {principal.role.value!r} may not use this "
                                f"endpoint (allowed: {names})")
        return principal

    role_check.__name__ = f"require_role({names})"
    return role_check


# The callers each endpoint admits (the role table is in server.serving.auth).
Researcher = Annotated[Principal, Depends(require_role(Role.RESEARCHER))]
Reader = Annotated[Principal, Depends(require_role(Role.RESEARCHER, Role.LEAD, Role.ADMIN))]
LeadOrAdmin = Annotated[Principal, Depends(require_role(Role.LEAD, Role.ADMIN))]
Admin = Annotated[Principal, Depends(require_role(Role.ADMIN))]
