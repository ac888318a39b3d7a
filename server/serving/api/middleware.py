"""The one middleware of the API: request id, body size limit, body content type, and
per-route request, latency and error metrics."""

from __future__ import annotations

import re
import time
import uuid

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.serving.prometheus import ServingMetrics, error_kind

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def _too_large_detail(limit: int) -> list[dict[str, object]]:
    return [{"loc": ["body"], "msg": f"request body exceeds {limit} bytes",
             "type": "too_large"}]


class BodyTooLarge(HTTPException):
    """A body without (or with a false) Content-Length outgrew the limit while read."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, _too_large_detail(limit))


class ObserveMiddleware:
    """Request id (the caller's ``X-Request-ID`` if well-formed, else a new one), body
    size limit, and per-route request/latency/error metrics.

    Pure ASGI (no BaseHTTPMiddleware): it adds microseconds, not a task per request.
    """

    def __init__(self, app: ASGIApp, metrics: ServingMetrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        headers = dict(scope["headers"])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        rid = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        status = 500
        seen = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []),
                                      (b"x-request-id", rid.encode())]
            await send(message)

        async def receive_limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise BodyTooLarge(self.max_body)
            return message

        try:
            length = int(headers.get(b"content-length", b"0") or 0)
        except ValueError:
            length = 0
        try:
            if length > self.max_body:
                await _too_large(send_with_id, self.max_body)
            elif (refused := _unsupported_media(scope, headers)) is not None:
                await _answer(send_with_id, 415, [{
                    "loc": ["header", "content-type"], "type": "unsupported_media_type",
                    "msg": f"send the body as {refused}"}])
            else:
                await self.app(scope, receive_limited, send_with_id)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", "unmatched")  # the template: bounded labels
            method = scope["method"]
            self.metrics.requests.labels(label, method, str(status)).inc()
            self.metrics.latency.labels(label, method).observe(time.perf_counter() - start)
            kind = error_kind(status)
            if kind:
                self.metrics.errors.labels(label, kind).inc()


async def _too_large(send: Send, limit: int) -> None:
    """Answer 413 without reading a body whose Content-Length is over the limit."""
    await _answer(send, 413, _too_large_detail(limit))


async def _answer(send: Send, status: int, detail: list[dict[str, object]]) -> None:
    body = JSONResponse(status_code=status, content={"detail": detail})
    await send({"type": "http.response.start", "status": status, "headers": body.raw_headers})
    await send({"type": "http.response.body", "body": body.body})


_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_MULTIPART_PATHS = frozenset({"/v1/predict/batch"})  # CSV uploads


def _unsupported_media(scope: Scope, headers: dict[bytes, bytes]) -> str | None:
    """What an API request with a body must be sent as, if it was sent as anything
    else (``text/plain``, no content type ...); ``None`` when it is fine."""
    if scope["method"] not in _BODY_METHODS or not scope["path"].startswith("/v1/"):
        return None
    media = headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
    if media == b"application/json" or (media.startswith(b"application/")
                                        and media.endswith(b"+json")):
        return None
    if scope["path"] in _MULTIPART_PATHS:
        return None if media == b"multipart/form-data" else \
            "application/json or multipart/form-data"
    return "application/json"
