"""Models: the registry (each finished run's model is registered), promotion with a reason."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from server.console_api import views
from server.console_api.routes.deps import Reason, State
from server.console_api.security import Operator
from server.console_api.state import ConsoleError
from server.serving.registry import Actor, RegistryError

router = APIRouter(prefix="/api/models")


@router.get("")
def models(state: State, _who: Operator) -> list[dict[str, Any]]:
    state.refresh_runs()
    return [views.model_json(state, m) for m in reversed(state.registry.models())]


@router.post("/{model_id}/promote")
def promote(model_id: str, body: Reason, state: State, who: Operator) -> dict[str, Any]:
    """Make the model the production model of its name (the previous one is archived);
    the promotion and its reason are one audit record."""
    try:
        state.registry.get(model_id)
        rec = state.registry.promote(model_id, actor=Actor(who.subject, who.role.value),
                                     reason=body.reason)
    except RegistryError as e:
        raise ConsoleError(404 if "no model" in str(e) else 422, str(e)) from None
    return views.model_json(state, rec)
