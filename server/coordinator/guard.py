"""Run control for the coordinator operator only: the SuperLink started behind a guard.

Flower 1.41 serves its Fleet, Control and Runtime (ServerAppIo) APIs over HTTP on one
``--host/--port``; ``--control-api-address`` is deprecated and binds nothing separate,
and Control API account authentication (OIDC) exists only in Flower Enterprise (the
open-source build loads a no-op plugin that accepts every caller). So, without more,
anyone who can reach the sites' port with the CA certificate can register or
unregister SuperNodes and start or stop runs.

This module runs ``flower-superlink`` in-process with one more ASGI middleware, placed
outermost through Flower's SuperLink middleware hook (:mod:`flwr.superlink.extensions`):

* ``/v1/control/*``: only with ``Authorization: Bearer <operator token>``; the token is
  a random secret in the state directory (0600). The coordinator's ``flwr`` CLI sends
  it from its own ``FLWR_HOME`` credential store (:func:`write_operator_credentials`);
* ``/v1/runtime/*`` (the ServerApp's and SuperExec's interface): only from this host
  (a loopback peer, or a peer whose address is the address it connected to);
* ``/v1/fleet/*`` and the rest: unchanged (Flower's node authentication applies).

Refusals are 403 with a JSON reason. If Flower's hook is missing (another Flower
version), the launcher exits instead of serving an unguarded SuperLink.

``python -m server.coordinator.guard --operator-token-file FILE -- <flower-superlink
arguments>`` is what :func:`server.coordinator.superlink.superlink_command` runs.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import json
import secrets
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import yaml

from common.atomic import write_text_atomic

TOKEN_FILE = "operator.token"
CONTROL_PREFIX = "/v1/control/"
RUNTIME_PREFIX = "/v1/runtime/"
GUARD_MODULE = "server.coordinator.guard"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def operator_token(state_dir: Path) -> str:
    """The state directory's operator token, created (0600) on first use."""
    path = Path(state_dir) / TOKEN_FILE
    if not path.exists():
        write_text_atomic(path, secrets.token_urlsafe(32) + "\n", private=True)
    token = path.read_text().strip()
    if len(token) < 32:
        raise ValueError(f"{path} holds no operator token; delete it to create a new one")
    return token


def write_operator_credentials(flwr_home: Path, address: str, token: str) -> Path:
    """Store the token where the Flower CLI looks for a SuperLink's bearer token, so
    that every ``flwr`` command against ``address`` sends it."""
    # Flower's file credential store: base64 values under per-address keys; "oidc"
    # makes the CLI attach the access token as ``Authorization: Bearer``.
    prefix = f"flower.account-auth.{address}"
    values = {f"{prefix}.authn-type": "oidc", f"{prefix}.oidc-access-token": token,
              f"{prefix}.oidc-refresh-token": token}
    path = Path(flwr_home) / "credentials.yaml"
    encoded = {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}
    write_text_atomic(path, yaml.safe_dump(encoded), private=True)
    return path


def is_same_host(client: str | None, server: str | None) -> bool:
    """The peer is this machine: loopback, or connected from the address it reached."""
    if not client:
        return False
    try:
        if ipaddress.ip_address(client).is_loopback:
            return True
    except ValueError:
        return False
    return client == server


class OperatorGuard:
    """ASGI middleware: Control API for the operator token, Runtime API for this host."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") == "http":
            reason = self.refusal(scope)
            if reason is not None:
                await _forbidden(send, reason)
                return
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope) -> str | None:
        """Why this request may not pass; ``None`` when it may."""
        path = scope.get("path", "")
        if path.startswith(CONTROL_PREFIX):
            given = [v for k, v in scope.get("headers", []) if k.lower() == b"authorization"]
            if len(given) != 1 or not hmac.compare_digest(given[0], self._expected):
                return "run control is reserved to the coordinator operator"
        elif path.startswith(RUNTIME_PREFIX):
            client = (scope.get("client") or (None, None))[0]
            server = (scope.get("server") or (None, None))[0]
            if not is_same_host(client, server):
                return "the runtime interface is reachable from the coordinator host only"
        return None


async def _forbidden(send: Send, reason: str) -> None:
    body = json.dumps({"detail": reason}).encode()
    await send({"type": "http.response.start", "status": 403,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def install_guard(token: str) -> None:
    """Put :class:`OperatorGuard` outermost in Flower's SuperLink app; refuse to go on
    if this Flower build does not take it."""
    from flwr.superlink import extensions
    from flwr.superlink import main as superlink_app
    from starlette.middleware import Middleware

    guard = Middleware(OperatorGuard, token=token)
    extensions.get_middleware = lambda: (guard,)
    installed = superlink_app._get_middleware()  # the hook really is used
    if not installed or installed[0] is not guard:
        raise SystemExit("this Flower version does not take SuperLink middleware; refusing "
                         "to serve run control without authentication")


def main(argv: list[str] | None = None) -> None:
    """``--operator-token-file FILE -- <flower-superlink arguments>``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 3 or args[0] != "--operator-token-file" or args[2] != "--":
        raise SystemExit("usage: python -m server.coordinator.guard --operator-token-file "
                         "FILE -- <flower-superlink arguments>")
    token = Path(args[1]).read_text().strip()
    if len(token) < 32:
        raise SystemExit(f"{args[1]} holds no operator token")
    install_guard(token)
    from flwr.superlink.cli.flower_superlink import flower_superlink

    sys.argv = ["flower-superlink", *args[3:]]
    flower_superlink()


if __name__ == "__main__":
    main()
