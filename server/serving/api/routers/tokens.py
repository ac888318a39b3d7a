"""Users: tokens issued by an admin (audited; the token itself is not)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request

from server.serving import schemas as s
from server.serving.api.deps import Admin, AuditDep, SettingsDep, TokensDep
from server.serving.predictor import InputError

router = APIRouter(prefix="/v1/tokens", tags=["users"])


@router.post("", response_model=s.TokenResponse)
def issue_token(body: s.TokenRequest, request: Request, who: Admin, tokens: TokensDep,
                settings: SettingsDep, audit: AuditDep) -> s.TokenResponse:
    """Issue a token for a user (roles: admin). Audited (the token itself is not)."""
    if not tokens.can_issue:
        raise HTTPException(409, "this server holds no signing key (verify-only)")
    ttl = body.ttl_seconds or settings.auth.token_ttl_seconds
    if ttl > settings.auth.max_token_ttl_seconds:
        raise InputError([{"loc": ["body", "ttl_seconds"], "type": "less_than_equal",
                           "msg": f"at most {settings.auth.max_token_ttl_seconds} s"}])
    token = tokens.issue(body.subject, body.role, ttl)
    audit.append(actor=who.subject, role=who.role.value, action="auth.issue_token",
                 request_id=request.state.request_id,
                 detail={"subject": body.subject, "role": body.role, "ttl": ttl})
    return s.TokenResponse(token=token, subject=body.subject, role=body.role, expires_in=ttl)
