"""Commands of the inference service: ``registry``, ``auth``, ``serve``, ``audit verify``.

The root CLI composes these; torch, SQLAlchemy and uvicorn are imported inside the
commands so ``--help`` stays fast. Every command reads the same settings as the server
(``--config FILE``, then ``CANCER_ALPHA_*`` environment variables, then options).
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

console = Console(stderr=True)

ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", help="Serving config (TOML, [serving] table).", exists=True, dir_okay=False)]
DbOpt = Annotated[str | None, typer.Option(
    "--db", help="Database URL (default sqlite:///runs/serving.db or $CANCER_ALPHA_DATABASE_URL)"
)]
ActorOpt = Annotated[str | None, typer.Option(
    "--actor", help="Name recorded in the audit log (default: the OS user).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]

registry_app = typer.Typer(help="The model registry: register, list, show and promote models.",
                           no_args_is_help=True)
auth_app = typer.Typer(help="Access tokens for the inference service.", no_args_is_help=True)
audit_app = typer.Typer(help="The audit log.", no_args_is_help=True)


def _fail(exc: Exception) -> None:
    console.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(2) from exc


def _settings(config: Path | None, **overrides: Any) -> Any:
    from server.serving.settings import ServingSettings, SettingsError

    try:
        return ServingSettings.load(config, **overrides)
    except SettingsError as exc:
        _fail(exc)


def _open(config: Path | None, db: str | None) -> tuple[Any, Any]:
    """(settings, registry) for the configured database."""
    from server.serving.audit_log import open_audit_log
    from server.serving.database import open_database
    from server.serving.registry import Registry

    settings = _settings(config, database_url=db)
    _, sessions = open_database(settings.database_url)
    return settings, Registry(sessions, open_audit_log(sessions, settings))


def _actor(name: str | None) -> Any:
    from server.serving.registry import Actor

    # The CLI acts with direct database access, i.e. as an administrator.
    return Actor(f"cli:{name or getpass.getuser()}", "admin")


# ------------------------------------------------------------------------------ registry
@registry_app.command("add")
def registry_add(
    run_dir: Annotated[Path, typer.Argument(help="Run directory (with model/) or bundle.")],
    name: Annotated[str | None, typer.Option(
        help="Model name (default: model_name setting, 'cancer-alpha').")] = None,
    config: ConfigOpt = None,
    db: DbOpt = None,
    actor: ActorOpt = None,
) -> None:
    """Register a model bundle as a new candidate version, with its lineage."""
    from server.serving.registry import RegistryError

    settings, registry = _open(config, db)
    try:
        rec = registry.add(run_dir, name=name or settings.model_name, actor=_actor(actor))
    except (RegistryError, OSError, json.JSONDecodeError) as exc:
        _fail(exc)
    console.print(f"registered [bold]{rec.ref}[/] ({rec.stage}) from {rec.bundle_path}")
    print(rec.ref)


@registry_app.command("list")
def registry_list(
    name: Annotated[str | None, typer.Option(help="Only this model name.")] = None,
    stage: Annotated[str | None, typer.Option(help="Only this stage.")] = None,
    config: ConfigOpt = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Registered models, oldest first."""
    _, registry = _open(config, db)
    records = registry.models(name=name, stage=stage)
    if as_json:
        print(json.dumps([r.as_dict() for r in records], indent=2))
        return
    table = Table(title="Model registry")
    for col in ("model", "stage", "run", "round", "strategy", "DP", "F1 macro (test)",
                "registered"):
        table.add_column(col)
    for r in records:
        f1 = ((r.metrics or {}).get("test") or {}).get("f1_macro")
        table.add_row(r.ref, r.stage, r.run_id or "", "" if r.round is None else str(r.round),
                      r.strategy or "", r.dp or "", "" if f1 is None else f"{f1:.3f}",
                      r.as_dict()["created_at"] or "")
    Console().print(table)


@registry_app.command("show")
def registry_show(
    model_id: Annotated[str, typer.Argument(help="NAME:VERSION")],
    config: ConfigOpt = None,
    db: DbOpt = None,
) -> None:
    """One model's full record (lineage, metrics, data fingerprints) as JSON."""
    from server.serving.registry import RegistryError

    _, registry = _open(config, db)
    try:
        print(json.dumps(registry.get(model_id).as_dict(), indent=2))
    except RegistryError as exc:
        _fail(exc)


@registry_app.command("promote")
def registry_promote(
    model_id: Annotated[str, typer.Argument(help="NAME:VERSION")],
    stage: Annotated[str, typer.Option(
        help="candidate, production or archived.")] = "production",
    config: ConfigOpt = None,
    db: DbOpt = None,
    actor: ActorOpt = None,
) -> None:
    """Move a model to a stage (audited); production archives the previous production model."""
    from server.serving.registry import RegistryError

    _, registry = _open(config, db)
    try:
        rec = registry.promote(model_id, stage=stage, actor=_actor(actor))
    except RegistryError as exc:
        _fail(exc)
    console.print(f"{rec.ref} is now [bold]{rec.stage}[/]")


# ---------------------------------------------------------------------------------- auth
@auth_app.command("issue-token")
def issue_token(
    subject: Annotated[str, typer.Option(help="Who the token is for (user or service).")],
    role: Annotated[str, typer.Option(help="admin, lead, researcher or site.")],
    ttl: Annotated[int | None, typer.Option(
        help="Lifetime in seconds (default: auth.token_ttl_seconds, 3600).")] = None,
    config: ConfigOpt = None,
    db: DbOpt = None,
    actor: ActorOpt = None,
) -> None:
    """Print a signed access token (needs the signing key: HMAC secret or private key).
    The issue is recorded in the audit log (the token itself is not)."""
    from server.serving.auth import ROLES, TokenService
    from server.serving.settings import SettingsError

    if role not in ROLES:
        _fail(ValueError(f"role {role!r} is not one of {list(ROLES)}"))
    settings, registry = _open(config, db)
    try:
        service = TokenService(settings.auth)
        token = service.issue(subject, role, ttl)
    except (SettingsError, ValueError) as exc:
        _fail(exc)
    who = _actor(actor)
    registry.audit.append(actor=who.subject, role=who.role, action="auth.issue_token",
                          detail={"subject": subject, "role": role,
                                  "ttl": ttl or settings.auth.token_ttl_seconds,
                                  "jti": service.token_id(token)})
    print(token)


@auth_app.command("revoke-token")
def revoke_token(
    jti: Annotated[str | None, typer.Option(
        help="The token's id (its jti claim; `audit` records of auth.issue_token show it).")
    ] = None,
    token: Annotated[str | None, typer.Option(
        help="The token itself (its signature is checked, its id revoked).")] = None,
    config: ConfigOpt = None,
    db: DbOpt = None,
    actor: ActorOpt = None,
) -> None:
    """Revoke one token before it expires, by id or by the token itself (audited).
    Every server refuses it within a second."""
    from server.serving.auth import AuthError, TokenService
    from server.serving.revocation import RevocationList
    from server.serving.settings import SettingsError

    if (jti is None) == (token is None):
        _fail(ValueError("give exactly one of --jti and --token"))
    settings, registry = _open(config, db)
    expires_at = 0
    if token is not None:
        try:
            jti, expires_at = TokenService(settings.auth).identify(token)
        except (SettingsError, AuthError) as exc:
            _fail(exc)
    assert jti is not None
    who = _actor(actor)
    try:
        done = RevocationList(registry.audit.sessions).revoke(
            jti, actor=who.subject, role=who.role, audit=registry.audit,
            expires_at=expires_at)
    except ValueError as exc:
        _fail(exc)
    console.print(f"token {jti} {'revoked' if done else 'was already revoked'}")


# --------------------------------------------------------------------------------- audit
def audit_verify(
    config: ConfigOpt = None,
    db: DbOpt = None,
    expect_head: Annotated[str | None, typer.Option(
        help="SEQ:HASH of a head noted earlier; detects deleted newest records.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check the audit log's hash chain, its anchor and that it records every registered
    model; exit 1 naming every modified or deleted record, a log that ends before its
    anchor (truncated) and models whose registration is missing (emptied)."""
    from server.serving.audit_log import open_audit_log
    from server.serving.database import open_database

    settings = _settings(config, database_url=db)
    head = None
    if expect_head:
        seq, _, digest = expect_head.partition(":")
        if not seq.isdigit() or len(digest) != 64:
            _fail(ValueError(f"--expect-head {expect_head!r} is not SEQ:HASH"))
        head = (int(seq), digest)
    from server.serving.registry import Registry

    _, sessions = open_database(settings.database_url)
    result = Registry(sessions, open_audit_log(sessions, settings)).verify_audit(
        expect_head=head)
    if as_json:
        print(json.dumps({"ok": result.ok, "checked": result.checked,
                          "head": {"seq": result.head[0], "hash": result.head[1]},
                          "anchor": result.anchor, "problems": result.problems}, indent=2))
    else:
        for problem in result.problems:
            console.print(f"[bold red]TAMPERED[/] {problem}")
        status = "[green]intact[/]" if result.ok else "[bold red]NOT intact[/]"
        console.print(f"audit log {status}: {result.checked} records checked; head "
                      f"{result.head[0]}:{result.head[1]}; anchor {result.anchor}")
    if not result.ok:
        raise typer.Exit(1)


audit_app.command("verify")(audit_verify)


# --------------------------------------------------------------------------------- serve
def serve(
    config: ConfigOpt = None,
    model: Annotated[str | None, typer.Option(
        help="'production' (default), NAME:VERSION, NAME:production, or a run/bundle "
        "directory to serve without the registry.")] = None,
    model_name: Annotated[str | None, typer.Option(
        help="Name whose production model 'production' means.")] = None,
    db: DbOpt = None,
    host: Annotated[str | None, typer.Option(help="Bind address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default 1).")] = None,
    threads: Annotated[int | None, typer.Option(
        help="Torch threads per worker (default: cores / workers).")] = None,
    ssl_keyfile: Annotated[str | None, typer.Option(
        help="TLS private key (PEM) for direct HTTPS; usually TLS ends at the ingress.")] = None,
    ssl_certfile: Annotated[str | None, typer.Option(help="TLS certificate chain (PEM).")] = None,
    log_level: Annotated[str | None, typer.Option(help="uvicorn log level.")] = None,
) -> None:
    """Serve the global model over HTTP (FastAPI + uvicorn).

    Needs a JWT verification key: CANCER_ALPHA_JWT_SECRET (HS256, at least 32 bytes) or
    CANCER_ALPHA_JWT_SECRET_FILE, or an asymmetric public key
    (CANCER_ALPHA_JWT_ALGORITHM=ES256, CANCER_ALPHA_JWT_PUBLIC_KEY_FILE).
    """
    import uvicorn

    from server.serving.audit_log import AuditKeyError
    from server.serving.auth import TokenService
    from server.serving.prometheus import MULTIPROC_ENV
    from server.serving.registry import RegistryError
    from server.serving.settings import WORKER_SETTINGS_ENV, SettingsError

    settings = _settings(config, model=model, model_name=model_name, database_url=db,
                         host=host, port=port, workers=workers, torch_threads=threads,
                         ssl_keyfile=ssl_keyfile, ssl_certfile=ssl_certfile,
                         log_level=log_level)
    try:  # fail here, with a clear message, rather than in every worker
        TokenService(settings.auth)
        _check_model(settings)
        _check_audit(settings)
    except (SettingsError, RegistryError, OSError, AuditKeyError) as exc:
        _fail(exc)
    os.environ[WORKER_SETTINGS_ENV] = settings.to_worker_env()
    multiproc_dir = None
    if settings.workers > 1 and not os.environ.get(MULTIPROC_ENV):
        multiproc_dir = tempfile.mkdtemp(prefix="cancer-alpha-metrics-")
        os.environ[MULTIPROC_ENV] = multiproc_dir
    scheme = "https" if settings.ssl_certfile else "http"
    console.print(f"serving on {scheme}://{settings.host}:{settings.port} with "
                  f"{settings.workers} worker(s)")
    try:
        uvicorn.run(
            "server.serving.app:app_from_env", factory=True, host=settings.host,
            port=settings.port, workers=settings.workers, log_level=settings.log_level,
            access_log=False,  # requests are counted in /metrics and audited; no patient data
            ssl_keyfile=settings.ssl_keyfile or None, ssl_certfile=settings.ssl_certfile or None,
            timeout_graceful_shutdown=10,
        )
    finally:
        if multiproc_dir:
            shutil.rmtree(multiproc_dir, ignore_errors=True)


def _check_audit(settings: Any) -> None:
    """Warn about a missing audit key or anchor; refuse a key the audit log was not
    written with."""
    from server.serving.audit_log import open_audit_log
    from server.serving.database import open_database

    _, sessions = open_database(settings.database_url)
    open_audit_log(sessions, settings).check_writable()


def _check_model(settings: Any) -> None:
    """Resolve the model the workers will load (registry or path) without importing torch."""
    from server.serving.audit_log import AuditLog
    from server.serving.database import open_database
    from server.serving.registry import Registry, bundle_dir_of, is_registry_ref, verify_bundle

    if is_registry_ref(settings.model):
        _, sessions = open_database(settings.database_url)
        verify_bundle(Registry(sessions, AuditLog(sessions)).resolve(settings.model,
                                                                     settings.model_name))
    else:
        bundle_dir_of(settings.model)
