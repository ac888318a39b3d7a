"""``cancer-alpha backup create|verify|restore`` for the coordinator's and serving state.

``create`` reads the same serving settings as ``serve`` (``--config``,
``CANCER_ALPHA_*``, ``--db``) for the database and the audit key. ``verify`` checks any
Cancer Alpha backup (a site's too). A site backs up its privacy ledger with
``cancer-alpha site backup``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

backup_app = typer.Typer(
    help="Back up, verify and restore the serving registry database, its audit log, the "
    "registered model bundles and the coordinator's checkpoints (SHA-256 checked archives).",
    no_args_is_help=True)

ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", help="Serving config (TOML, [serving] table): database URL and audit key.",
    exists=True, dir_okay=False)]
DbOpt = Annotated[str | None, typer.Option(
    "--db", help="Database URL (default sqlite:///runs/serving.db or $CANCER_ALPHA_DATABASE_URL)")]


def _fail(exc: Exception, code: int = 2) -> None:
    Console(stderr=True).print(f"[bold red]error:[/] {escape(str(exc))}")
    raise typer.Exit(code) from exc


def _settings(config: Path | None, db: str | None) -> Any:
    from server.serving.settings import ServingSettings, SettingsError

    try:
        return ServingSettings.load(config, database_url=db)
    except SettingsError as exc:
        _fail(exc)


@backup_app.command("create")
def create(
    out: Annotated[Path, typer.Option("--out", metavar="ARCHIVE",
                                      help="The backup file to write (.tar.gz); never replaced.")],
    checkpoints: Annotated[list[Path] | None, typer.Option(
        "--checkpoints", metavar="DIR",
        help="A run directory, its checkpoint/ directory, or a directory of runs (e.g. the "
        "coordinator's STATE_DIR/runs); repeatable.")] = None,
    registry: Annotated[bool, typer.Option(
        "--registry/--no-registry",
        help="Include the serving database (SQLite) and its model bundles; --no-registry "
        "backs up checkpoints only (e.g. where the registry is PostgreSQL, backed up with "
        "pg_dump).")] = True,
    config: ConfigOpt = None,
    db: DbOpt = None,
) -> None:
    """Back up the registry database and audit log (a consistent snapshot, safe while the
    service runs), every registered model bundle and the given checkpoints."""
    from common.backup import BackupError
    from server.backup.coordinator import CoordinatorSources, create_coordinator_backup

    settings = _settings(config, db)
    try:
        manifest = create_coordinator_backup(
            CoordinatorSources(settings.database_url if registry else None, settings.audit_key,
                               list(checkpoints or []), settings.audit_anchor_path()),
            out)
    except (BackupError, OSError) as exc:
        _fail(exc)
    console = Console()
    parts = []
    reg = manifest.components.get("registry")
    if reg is not None:
        if not reg["audit_intact"]:
            console.print("[yellow]warning:[/] the audit log does not verify: "
                          + escape("; ".join(reg["audit_problems"])))
        parts.append(f"{reg['models']} model(s), {reg['audit_records']} audit record(s) "
                     f"(head {reg['audit_head'][0]})")
    parts.append(f"{len(manifest.components['checkpoints'])} checkpoint(s)")
    console.print(f"backed up to {escape(str(out))}: {', '.join(parts)}, "
                  f"{len(manifest.files)} file(s)")


@backup_app.command("verify")
def verify(
    archive: Annotated[Path, typer.Argument(metavar="ARCHIVE", help="The backup file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """Check every file of a backup (coordinator or site) against its manifest's SHA-256;
    exit 1 naming each problem when it does not verify."""
    from common.backup import BackupError, verify_archive

    try:
        manifest = verify_archive(archive)
    except BackupError as exc:
        Console(stderr=True).print(f"[bold red]NOT valid:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None
    if as_json:
        print(json.dumps(manifest.to_dict(), indent=2))
        return
    Console().print(f"{escape(str(archive))}: valid {manifest.kind} backup of "
                    f"{manifest.created_at}, {len(manifest.files)} file(s)")


@backup_app.command("restore")
def restore(
    archive: Annotated[Path, typer.Argument(metavar="ARCHIVE", help="The backup file.")],
    into: Annotated[Path, typer.Option("--into", metavar="DIR",
                                       help="A new or empty directory to restore into.")],
    config: ConfigOpt = None,
) -> None:
    """Restore into an empty directory: serving.db (registry and audit log) pointing at
    the restored bundles/, and checkpoints/RUN/; then check the audit chain, every
    bundle's digest and every checkpoint."""
    from common.backup import BackupError
    from server.backup.coordinator import restore_coordinator_backup

    settings = _settings(config, None)
    try:
        report = restore_coordinator_backup(archive, into, settings.audit_key)
    except (BackupError, OSError) as exc:
        _fail(exc)
    console = Console()
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}")
    if "registry" not in report.manifest.components:
        audit = "no registry in this backup"
    elif report.audit_verified:
        audit = f"audit log intact to record {report.audit_head[0]}"
    else:
        audit = "audit log NOT checked (no key)"
    console.print(f"restored into {escape(str(into))}: {len(report.models)} model(s), "
                  f"{audit}, {len(report.checkpoints)} checkpoint(s)")
    if report.models:
        console.print(f"serve it with --db sqlite:///{escape(str(report.database))}")
