"""Users: tokens issued and revoked by an admin (audited with the token's id, never the
token itself)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Path, Request, Response

from server.serving import schemas as s
from server.serving.api.deps import Admin, AuditDep, SettingsDep, StateDep, TokensDep
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
                 detail={"subject": body.subject, "role": body.role, "ttl": ttl,
                         "jti": tokens.token_id(token)})
    return s.TokenResponse(token=token, subject=body.subject, role=body.role, expires_in=ttl)


@router.delete("/{jti}", status_code=204, response_class=Response,
               responses={404: {"model": s.ErrorResponse,
                                "description": "Token id already revoked"}})
def revoke_token(request: Request, who: Admin, state: StateDep,
                 jti: str = Path(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_-]+$",
                                 description="The token's id (its jti claim, in the audit "
                                 "record of its issue).")) -> Response:
    """Revoke one token by its id before it expires (roles: admin). Audited."""
    if state.revocations is None:
        raise HTTPException(409, "this server keeps no revocation list")
    if not state.revocations.revoke(jti, actor=who.subject, role=who.role.value,
                                    audit=state.audit, request_id=request.state.request_id):
        raise HTTPException(404, f"token {jti} is already revoked")
    return Response(status_code=204)
