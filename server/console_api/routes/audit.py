"""The audit log: filtered entries, and the verification of its hash chain."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from sqlalchemy import select

from server.console_api import views
from server.console_api.routes.deps import State
from server.console_api.security import Operator
from server.serving.audit_log import AuditRecord

router = APIRouter(prefix="/api/audit")


@router.get("")
def entries(state: State, _who: Operator, action: str | None = Query(None, max_length=80),
            actor: str | None = Query(None, max_length=200),
            limit: int = Query(200, ge=1, le=5000)) -> list[dict[str, Any]]:
    """The newest ``limit`` entries matching the filters, newest first."""
    q = select(AuditRecord).order_by(AuditRecord.seq.desc()).limit(limit)
    if action:
        q = q.where(AuditRecord.action == action)
    if actor:
        q = q.where(AuditRecord.actor == actor)
    with state.audit.sessions() as s:
        return [views.audit_json(r) for r in s.scalars(q)]


@router.get("/verify")
def verify(state: State, _who: Operator) -> dict[str, Any]:
    result = state.registry.verify_audit()
    return {"intact": result.ok, "entries": result.checked,
            "problem": "; ".join(result.problems) or None, "anchor": result.anchor}
