"""Who calls the console API: JWT bearer tokens verified by the inference service's
:class:`~server.serving.auth.TokenService`, with the console's own audience.

The signing secret is ``CANCER_ALPHA_CONSOLE_JWT_SECRET`` or, when unset, the file
``STATE_DIR/console/jwt.secret`` (created 0600 on first start). Roles: ``lead`` and
``admin`` see everything (``admin`` alone enables and revokes sites); a ``site`` token's
subject is its site name and it sees only that site.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Awaitable, Callable
from functools import cache
from pathlib import Path
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from common.atomic import write_text_atomic
from server.serving.auth import AuthError, Principal, Role, TokenService
from server.serving.settings import AuthSettings

SECRET_ENV = "CANCER_ALPHA_CONSOLE_JWT_SECRET"
SECRET_FILE = "jwt.secret"
AUDIENCE = "cancer-alpha-console"
CONSOLE_ROLES = (Role.LEAD, Role.ADMIN, Role.SITE)


def console_secret(console_dir: Path) -> str:
    """The signing secret: from the environment, else the state directory's file."""
    if os.environ.get(SECRET_ENV):
        return os.environ[SECRET_ENV]
    path = console_dir / SECRET_FILE
    if not path.exists():
        console_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_text_atomic(path, secrets.token_urlsafe(48) + "\n", private=True)
    return path.read_text().strip()


def console_tokens(console_dir: Path, ttl_seconds: int = 8 * 3600) -> TokenService:
    return TokenService(AuthSettings(secret=console_secret(console_dir), audience=AUDIENCE,
                                     token_ttl_seconds=ttl_seconds))


def _token_of(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    # EventSource cannot set headers: the event stream takes the token as a parameter.
    if request.url.path.endswith("/events") and request.query_params.get("token"):
        return request.query_params["token"]
    raise HTTPException(401, "a bearer token is required (Authorization: Bearer <token>)",
                        headers={"WWW-Authenticate": "Bearer"})


async def principal(request: Request) -> Principal:
    """The caller, from a valid token of a console role; 401 otherwise."""
    tokens: TokenService = request.app.state.console.tokens
    try:
        who = tokens.verify(_token_of(request))
    except AuthError as e:
        raise HTTPException(401, f"the token is not accepted: {e}",
                            headers={"WWW-Authenticate": "Bearer"}) from None
    if who.role not in CONSOLE_ROLES:
        raise HTTPException(403, f"role {who.role.value!r} has no access to the coordinator "
                            "console (lead, admin or site)")
    return who


Caller = Annotated[Principal, Depends(principal)]


@cache
def require(*roles: Role) -> Callable[..., Awaitable[Principal]]:
    """A dependency that admits only ``roles`` (403 for the others)."""
    names = " or ".join(r.value for r in roles)

    async def check(who: Caller) -> Principal:
        if who.role not in roles:
            raise HTTPException(403, f"this needs the {names} role; the token's role is "
                                f"{who.role.value!r}")
        return who

    return check


Operator = Annotated[Principal, Depends(require(Role.LEAD, Role.ADMIN))]
Admin = Annotated[Principal, Depends(require(Role.ADMIN))]


def own_site(who: Principal) -> str | None:
    """The one site a ``site`` token may see; None for leads and admins."""
    return who.subject if who.role == Role.SITE else None
