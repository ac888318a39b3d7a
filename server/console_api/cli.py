"""``coordinator serve`` (the long-running coordinator service with the console) and
``coordinator console-token`` (a signed token for it)."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.text import Text

err = Console(stderr=True)

PKI_ENV, STATE_ENV, APP_ENV = "CANCER_ALPHA_CERTS_DIR", "CANCER_ALPHA_STATE_DIR", \
    "CANCER_ALPHA_APP"
_PkiOpt = typer.Option(Path("pki"), "--pki", metavar="DIR", envvar=PKI_ENV,
                       help="PKI directory (ca.crt, server.crt/.key, sites/*/site.pub).")
_StateOpt = typer.Option(Path("coordinator"), "--state-dir", metavar="DIR", envvar=STATE_ENV,
                         help="Link state, site registry, logs, runs and the console's store.")


def serve(
    pki_dir: Path = _PkiOpt,
    state_dir: Path = _StateOpt,
    host: str = typer.Option("0.0.0.0", "--host", help="Address the SuperLink listens on."),
    port: int = typer.Option(9092, "--port", help="Port sites connect to (HTTPS)."),
    api_host: str = typer.Option("127.0.0.1", "--api-host",
                                 help="Address of the console and its API."),
    api_port: int = typer.Option(8080, "--api-port", help="Port of the console and its API."),
    ssl_certfile: str = typer.Option("", "--ssl-certfile", metavar="FILE",
                                     help="TLS certificate of the console (HTTPS)."),
    ssl_keyfile: str = typer.Option("", "--ssl-keyfile", metavar="FILE",
                                    help="TLS key of the console."),
    app_dir: Path | None = typer.Option(
        None, "--app", metavar="DIR", envvar=APP_ENV,
        help="Flower app to submit (default: this checkout)."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Log more."),
) -> None:
    """Run the coordinator as a service: the SuperLink plus the console and its API.

    Leads start, stop and resume runs from saved templates (STATE_DIR/templates),
    watch them live, enable or revoke sites and promote models, at
    http://API_HOST:API_PORT/console; every action is in the audit log. Tokens come
    from `coordinator console-token`. Runs until Ctrl-C or SIGTERM.
    """
    from server.console_api.service import ServeConfig
    from server.console_api.service import serve as run_service
    from server.coordinator import PROJECT_ROOT, CoordinatorConfig, CoordinatorError

    _logging(verbose)
    cfg = ServeConfig(CoordinatorConfig(pki_dir=pki_dir, state_dir=state_dir, host=host,
                                        port=port, app_dir=app_dir or PROJECT_ROOT),
                      api_host=api_host, api_port=api_port, ssl_certfile=ssl_certfile,
                      ssl_keyfile=ssl_keyfile)
    scheme = "https" if ssl_certfile else "http"
    err.print(f"coordinator service: sites connect to {host}:{port}; console at "
              f"{scheme}://{api_host}:{api_port}/console")
    try:
        run_service(cfg)
    except CoordinatorError as e:
        err.print(Text(f"error: {e}", style="red"))
        raise typer.Exit(2) from None


def console_token(
    subject: str = typer.Option(..., "--subject",
                                help="Who the token is for; for the site role, the site id."),
    role: str = typer.Option(..., "--role", help="lead, admin or site."),
    ttl: int = typer.Option(8 * 3600, "--ttl", help="Lifetime in seconds."),
    state_dir: Path = _StateOpt,
    pki_dir: Path = _PkiOpt,
) -> None:
    """Print a signed token for the coordinator console (audited; the token is not kept).

    Signed with CANCER_ALPHA_CONSOLE_JWT_SECRET, or the state directory's
    console/jwt.secret (created on first use).
    """
    from server.console_api.security import CONSOLE_ROLES
    from server.console_api.service import open_state

    if role not in {r.value for r in CONSOLE_ROLES}:
        err.print(Text(f"error: role {role!r} is not one of lead, admin, site", style="red"))
        raise typer.Exit(2)
    state = open_state(state_dir, pki_dir)
    if role == "site" and state.store.site(subject) is None:
        err.print(Text(f"error: no site {subject!r} in {pki_dir}/sites", style="red"))
        raise typer.Exit(2)
    try:
        token = state.tokens.issue(subject, role, ttl)
    except ValueError as e:
        err.print(Text(f"error: {e}", style="red"))
        raise typer.Exit(2) from None
    state.audit.append(actor="coordinator", role="admin", action="auth.issue_token",
                       detail={"subject": subject, "role": role, "ttl": ttl,
                               "jti": state.tokens.token_id(token)})
    state.store.close()
    print(token)


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=err, show_path=False)], force=True)
