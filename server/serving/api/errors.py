"""The API's error answers: validation errors without the input, the predictor's input
errors, a 503 while the database is unavailable, and a 500 that names only the request
id."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as db

from server.serving.predictor import InputError

logger = logging.getLogger(__name__)


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 with only location, message and type of each error."""
    assert isinstance(exc, RequestValidationError)
    # The default echoes the input (patient values, and NaN, which JSON cannot carry:
    # that would turn a 422 into a 500).
    return JSONResponse(status_code=422, content={"detail": [
        {"loc": [p if isinstance(p, int) else str(p) for p in e.get("loc", ())],
         "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
        for e in exc.errors()]})


async def input_error(request: Request, exc: Exception) -> JSONResponse:
    """The predictor's errors, located in the request (422, or 413 for a big batch)."""
    assert isinstance(exc, InputError)
    return JSONResponse(status_code=exc.status_code, content={"detail": exc.errors})


# The database (registry, audit log, revoked tokens) cannot be reached or used right now:
# a request that needs it cannot be answered or audited, but the service is sound and
# answers again once it is back (the connection pool reconnects; no restart).
DATABASE_UNAVAILABLE = (db.OperationalError, db.InterfaceError, db.DisconnectionError,
                        db.TimeoutError)
RETRY_AFTER_SECONDS = 5


async def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """503 with Retry-After; the cause goes to the log."""
    rid = request.scope.get("state", {}).get("request_id", "")
    logger.error("request %s: database unavailable: %s", rid, exc.__class__.__name__)
    return JSONResponse(status_code=503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
                        content={"detail": f"the service's database is unavailable; retry "
                                 f"later (request id {rid})"})


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    """500: the cause goes to the log, the caller gets the request id to quote."""
    rid = request.scope.get("state", {}).get("request_id", "")
    logger.error("request %s failed: %s", rid, exc.__class__.__name__, exc_info=exc)
    return JSONResponse(status_code=500, content={"detail": f"internal error (request id {rid})"})


EXCEPTION_HANDLERS: dict[type[Exception], Callable[[Request, Exception],
                                                   Awaitable[Response]]] = {
    RequestValidationError: validation_error,
    InputError: input_error,
    **{cls: database_unavailable for cls in DATABASE_UNAVAILABLE},
    Exception: internal_error,
}
