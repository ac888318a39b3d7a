"""``cancer-alpha quarantine``: list and release the sites a run's coordinator quarantined."""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

quarantine_app = typer.Typer(no_args_is_help=True, help=(
    "Sites left out of a run after repeated rejected updates (run config "
    "quarantine-after): list them and release them."))

RunDirOpt = Annotated[Path, typer.Option("--run-dir", help="The run directory.")]


@quarantine_app.command("list")
def list_cmd(run_dir: RunDirOpt) -> None:
    """Every quarantine and release of the run, oldest first, and who is out now."""
    from strategies.quarantine import active_quarantines, quarantine_path, read_events

    events = read_events(quarantine_path(run_dir))
    table = Table(title=f"Quarantine events: {run_dir}")
    for col in ("time", "event", "site", "round", "by", "why"):
        table.add_column(col)
    for e in events:
        table.add_row(e["time"], e["event"], e["site"], str(e.get("round", "")), e["by"],
                      e.get("last_reason") or e.get("note", ""))
    Console().print(table)
    active = sorted(active_quarantines(events))
    Console().print(f"quarantined now: {', '.join(active) if active else 'none'}")


@quarantine_app.command("release")
def release_cmd(
    run_dir: RunDirOpt,
    site: Annotated[str, typer.Option("--site", help="The quarantined site to release.")],
    by: Annotated[str, typer.Option(
        "--by", help="Who releases it (recorded; default: the login name).")] = "",
    note: Annotated[str, typer.Option("--note", help="Why (recorded).")] = "",
) -> None:
    """Release a quarantined site: its updates are vetted again from the next round."""
    from strategies.quarantine import release

    try:
        event = release(run_dir, site, by or getpass.getuser(), note)
    except ValueError as exc:
        Console(stderr=True).print(Text(f"error: {exc}", style="bold red"))
        raise typer.Exit(2) from exc
    Console().print(f"released {site} ({event['time']}, by {event['by']})")
