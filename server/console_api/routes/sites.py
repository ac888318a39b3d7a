"""Sites: the PKI's keys with presence and declared data; revoke and enable (admin)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from common.pki import PkiError, revoke_site, unrevoke_site
from server.console_api import views
from server.console_api.routes.deps import Reason, State
from server.console_api.security import Admin, Caller, own_site
from server.console_api.state import ConsoleError, ConsoleState

router = APIRouter(prefix="/api/sites")


@router.get("")
def sites(state: State, who: Caller) -> list[dict[str, Any]]:
    state.refresh_sites()
    mine = own_site(who)
    return [views.site_json(s) for s in state.store.sites() if mine in (None, s.name)]


@router.post("/{name}/revoke")
def revoke(name: str, body: Reason, state: State, who: Admin) -> dict[str, Any]:
    return _change(state, name, revoked=True, reason=body.reason, actor=who)


@router.post("/{name}/enable")
def enable(name: str, body: Reason, state: State, who: Admin) -> dict[str, Any]:
    return _change(state, name, revoked=False, reason=body.reason, actor=who)


def _change(state: ConsoleState, name: str, *, revoked: bool, reason: str,
            actor: Any) -> dict[str, Any]:
    """Mark the key revoked (or not) in the PKI, then make the SuperLink's nodes match:
    a revoked site's next heartbeat is refused."""
    with state.lock:
        state.refresh_sites()
        if state.store.site(name) is None:
            raise ConsoleError(404, f"no site {name!r} in the PKI ({state.pki.root / 'sites'})")
        try:
            (revoke_site if revoked else unrevoke_site)(state.pki, name)
        except PkiError as e:
            raise ConsoleError(422, str(e)) from None
        refused = state.control.sync_sites() if state.control is not None else {}
        state.refresh_sites()
        state.store.update_site(name, registration_problem=refused.get(name),
                                **({"online": False} if revoked else {}))
        state.audit.append(actor=actor.subject, role=actor.role.value,
                           action="site.revoke" if revoked else "site.enable",
                           detail={"site": name, "reason": reason,
                                   "synced": state.control is not None,
                                   **({"refused": refused[name]} if name in refused else {})})
        row = state.store.site(name)
    assert row is not None
    return views.site_json(row)
