"""The coordinator service's FastAPI app: the JSON API under ``/api`` and the built
console (``server/console_web/dist``) under ``/console``."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response

from server.console_api.routes import audit, general, models, runs, sites
from server.console_api.state import ConsoleError, ConsoleState

CONSOLE_DIST = Path(__file__).resolve().parents[1] / "console_web" / "dist"


def create_app(state: ConsoleState, console_dist: Path = CONSOLE_DIST) -> FastAPI:
    """The app over ``state``; the console's files come from ``console_dist``."""
    app = FastAPI(title="Cancer Alpha coordinator", version="1",
                  docs_url="/api/docs", openapi_url="/api/openapi.json", redoc_url=None)
    app.state.console = state
    for module in (general, sites, runs, models, audit):
        app.include_router(module.router)
    _errors(app)
    _console(app, console_dist)
    return app


def _errors(app: FastAPI) -> None:
    """Every error is ``{"detail": "<a sentence>"}``."""

    @app.exception_handler(ConsoleError)
    async def console_error(_request: Request, exc: ConsoleError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "request"
            problems.append(f"{where}: {err.get('msg', 'invalid')}")
        return JSONResponse({"detail": "invalid request: " + "; ".join(problems)},
                            status_code=422)


def _console(app: FastAPI, dist: Path) -> None:
    """Static files of the built console; any other path under it is the single-page
    app's own route (index.html)."""

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/console/")

    @app.get("/console", include_in_schema=False)
    @app.get("/console/{path:path}", include_in_schema=False)
    async def console(path: str = "") -> Response:
        index = dist / "index.html"
        if not index.is_file():
            raise HTTPException(404, f"the console is not built: no {index}. Build it with "
                                "`npm ci && npm run build` in server/console_web (the API "
                                "under /api works without it)")
        root = dist.resolve()
        target = (root / path).resolve()
        if path and target.is_file() and target.is_relative_to(root):
            return FileResponse(target)
        return FileResponse(index, headers={"Cache-Control": "no-cache"})
