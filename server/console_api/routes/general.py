"""Health, the caller, the overview page and the run templates."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from server.console_api import views
from server.console_api.routes.deps import State
from server.console_api.security import Caller, Operator, own_site

router = APIRouter(prefix="/api")


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/me")
async def me(who: Caller) -> dict[str, Any]:
    return {"subject": who.subject, "role": who.role.value, "site": own_site(who)}


@router.get("/overview")
def overview(state: State, who: Caller) -> dict[str, Any]:
    state.refresh_sites()
    state.refresh_runs()
    sites = [s for s in state.store.sites() if not s.revoked]
    models = [] if own_site(who) else state.registry.models(name=state.model_name)
    return {"sites_total": len(sites), "sites_online": sum(s.online for s in sites),
            "runs_running": [views.run_summary(state, r) for r in state.store.runs("running")],
            "latest_model": views.model_json(state, models[-1]) if models else None}


@router.get("/templates")
def templates(state: State, _who: Operator) -> list[dict[str, Any]]:
    return [t.as_dict() for t in state.templates.all()]
