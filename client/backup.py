"""``cancer-alpha site backup create|verify|restore``: a site's privacy ledger, backed up.

The archive (see :mod:`common.backup`) holds ``privacy-ledger.json`` and records what
it had spent when backed up: entries, steps and the epsilon at the ledger's delta.
Restoring writes it into a new or empty directory, which is then a state directory
(``site budget --state-dir DIR``, ``[site] state-dir``), and checks that the restored
ledger reads back to the same entries and epsilon.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from common.backup import BackupError, Manifest, Source

SITE_KIND = "site"
LEDGER_COMPONENT = "privacy_ledger"
# The delta epsilon is reported at when the ledger records none (as `site budget`).
FALLBACK_DELTA = 1e-5

backup_app = typer.Typer(
    help="Back up and restore this site's privacy ledger (SHA-256 checked archives).",
    no_args_is_help=True)


@dataclass(frozen=True)
class LedgerFacts:
    """What the ledger had spent: compared after a restore."""

    entries: int
    steps: int
    delta: float
    epsilon: float
    accountant: str

    @classmethod
    def of(cls, path: Path) -> LedgerFacts:
        from client.privacy import LedgerError, PrivacyLedger

        try:
            ledger = PrivacyLedger.open(path, accountant=None)
        except LedgerError as exc:
            raise BackupError(f"the privacy ledger cannot be read ({exc}); it is left as it "
                              "is: copy the file by hand to keep it") from None
        delta = ledger.delta or FALLBACK_DELTA
        summary = ledger.summary(delta)
        return cls(summary["entries"], summary["steps"], delta, summary["epsilon"],
                   ledger.accountant)


def create_site_backup(state_dir: Path, dest: Path) -> Manifest:
    """Back up the ledger in ``state_dir`` to ``dest``."""
    from client.privacy import ledger_path
    from common.backup import write_archive

    path = ledger_path(state_dir)
    if not path.is_file():
        raise BackupError(f"{path}: no privacy ledger here (is {state_dir} the site's "
                          "state directory?)")
    facts = LedgerFacts.of(path)
    return write_archive(dest, SITE_KIND, [Source(path.name, path, LEDGER_COMPONENT)],
                         {LEDGER_COMPONENT: facts.__dict__})


def restore_site_backup(archive: Path, into: Path) -> tuple[Manifest, LedgerFacts]:
    """Restore into ``into`` (new or empty) and check the ledger spends what it did."""
    from client.privacy import ledger_path
    from common.backup import extract_archive, verify_archive

    manifest = verify_archive(archive)
    if manifest.kind != SITE_KIND:
        raise BackupError(f"{archive} is a {manifest.kind} backup, not a site's: restore it "
                          "with `cancer-alpha backup restore`")
    extract_archive(archive, into)
    facts = LedgerFacts.of(ledger_path(into))
    recorded = LedgerFacts(**manifest.components[LEDGER_COMPONENT])
    if facts != recorded:
        raise BackupError(f"the restored ledger in {into} differs from the one backed up "
                          f"({facts} != {recorded})")
    return manifest, facts


# ---------------------------------------------------------------------------- commands
def _fail(exc: Exception) -> None:
    Console(stderr=True).print(f"[bold red]error:[/] {escape(str(exc))}")
    raise typer.Exit(2) from exc


@backup_app.command("create")
def create_cmd(
    state_dir: Path = typer.Option(..., "--state-dir", metavar="DIR",
                                   help="The site's state directory (holds privacy-ledger.json)."),
    out: Path = typer.Option(..., "--out", metavar="ARCHIVE",
                             help="The backup file to write (.tar.gz); never replaced."),
) -> None:
    """Back up the privacy ledger: an archive with SHA-256 checksums and a manifest."""
    try:
        manifest = create_site_backup(state_dir, out)
    except (BackupError, OSError) as exc:
        _fail(exc)
    facts = manifest.components[LEDGER_COMPONENT]
    Console().print(f"backed up {escape(str(state_dir))} to {escape(str(out))}: "
                    f"{facts['entries']} round(s), epsilon {facts['epsilon']:.4f} at delta "
                    f"{facts['delta']:g}")


@backup_app.command("verify")
def verify_cmd(
    archive: Path = typer.Argument(..., metavar="ARCHIVE", help="The backup file."),
) -> None:
    """Check every file of a backup against its manifest; exit 1 if it does not verify."""
    from common.backup import verify_archive

    try:
        manifest = verify_archive(archive)
    except BackupError as exc:
        Console(stderr=True).print(f"[bold red]NOT valid:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None
    Console().print(f"{escape(str(archive))}: valid {manifest.kind} backup of "
                    f"{manifest.created_at}, {len(manifest.files)} file(s)")


@backup_app.command("restore")
def restore_cmd(
    archive: Path = typer.Argument(..., metavar="ARCHIVE", help="The backup file."),
    into: Path = typer.Option(..., "--into", metavar="DIR",
                              help="A new or empty directory: the restored state directory."),
) -> None:
    """Restore the privacy ledger into an empty directory and check the epsilon it spent."""
    try:
        _, facts = restore_site_backup(archive, into)
    except (BackupError, OSError) as exc:
        _fail(exc)
    Console().print(f"restored into {escape(str(into))}: {facts.entries} round(s), epsilon "
                    f"{facts.epsilon:.4f} at delta {facts.delta:g}, as backed up")
