"""The coordinator service: the SuperLink plus a JSON API for the consortium's console.

``cancer-alpha coordinator serve`` (:mod:`~server.console_api.service`) starts the
SuperLink as ``coordinator start`` does and serves, until stopped, the API the web
console (``server/console_web``) is built against (``/api``, contract in
``docs/console.md``) and the built console itself (``/console``).

Modules: :mod:`~server.console_api.store` (sites and runs in SQLite),
:mod:`~server.console_api.rundir` (a run directory in the console's terms),
:mod:`~server.console_api.templates` (saved run configs),
:mod:`~server.console_api.security` (tokens and roles),
:mod:`~server.console_api.state` (what the service holds; PKI, runs and registry
brought into the store), :mod:`~server.console_api.views` (the JSON objects),
:mod:`~server.console_api.supervisor` (runs on the SuperLink, site presence),
:mod:`~server.console_api.routes` (the endpoints), :mod:`~server.console_api.app`
(the FastAPI app), :mod:`~server.console_api.cli` (the commands).
"""
