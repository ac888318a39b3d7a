"""``cancer-alpha site ...``: commands a hospital runs on its own data.

``site check --data DIR`` validates a dataset directory (see :mod:`common.dataset` for
the format) and, with ``--model RUN_DIR``, checks it against a trained model's schema.
``site check --config site.toml`` also validates the site's configuration, keys and CA
(``--probe`` verifies the coordinator's TLS certificate with a handshake). It never
sends any data anywhere.

``site start --config site.toml`` joins the consortium: checks as above, then runs the
site's Flower SuperNode (see :mod:`client.launcher`) until stopped.

``site budget --state-dir DIR`` shows the site's privacy ledger (``DIR/privacy-ledger.json``,
see :mod:`client.privacy`): every DP-SGD round it has trained and the cumulative epsilon.

``site backup create|verify|restore`` backs up that ledger (see :mod:`client.backup`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from client.backup import backup_app

if TYPE_CHECKING:
    from common.site_config import SiteConfig

app = typer.Typer(
    name="site",
    help="Commands for a participating site (hospital): check local data and configuration "
    "before joining, join the consortium, show the privacy budget spent, back up the "
    "privacy ledger.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(backup_app, name="backup")


@app.callback()
def _site() -> None:
    """Commands for a participating site (hospital)."""


@app.command()
def check(
    data: str | None = typer.Option(
        None, "--data", metavar="DIR",
        help="Dataset directory, or a bundled alias: brca, rosmap (default: the config's).",
    ),
    config: Path | None = typer.Option(
        None, "--config", metavar="SITE_TOML",
        help="site.toml: also check the site's settings, key, CA and data directory.",
    ),
    probe: bool = typer.Option(
        False, "--probe", help="With --config: verify the coordinator's TLS certificate."
    ),
    other_configs: list[Path] = typer.Option(
        [], "--other-config", metavar="SITE_TOML",
        help="With --config: another site on this host (repeatable); its SuperNode port and "
        "state directory must differ. The site.toml files beside --config are checked too.",
    ),
    split: str | None = typer.Option(
        None, "--split", metavar="S", help="Check one split only (datasets with splits)."
    ),
    manifest: Path | None = typer.Option(
        None,
        "--manifest",
        metavar="FILE",
        help="Manifest TOML describing the layout (default: auto).",
    ),
    model: Path | None = typer.Option(
        None,
        "--model",
        metavar="RUN_DIR",
        help="Run directory; checks the data against RUN_DIR/model/schema.json.",
    ),
) -> None:
    """Validate a dataset directory; exit code 1 if it has errors."""
    # Imported here so `cancer-alpha --help` stays fast.
    from common.dataset import inspect_dataset
    from common.dataset.qc import summary_rows as qc_summary_rows
    from common.paths import resolve_data_dir
    from common.schema import FeatureSchema

    if data is None and config is None:
        raise typer.BadParameter("give --data DIR or --config site.toml", param_hint="--data")
    config_ok = True
    if config is not None:  # report key and CA problems, then the data's, then fail
        site_cfg = _site_config(config)
        config_ok = _preflight_ok(site_cfg, probe=probe, other_configs=other_configs)
        if data is None:
            data = str(site_cfg.data_dir)
            manifest = manifest or site_cfg.manifest
    assert data is not None
    try:
        directory = resolve_data_dir(data)
    except FileNotFoundError as e:
        raise typer.BadParameter(str(e), param_hint="--data") from None
    schema = None
    if model is not None:
        path = model / "model" / "schema.json"
        try:
            schema = FeatureSchema.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise typer.BadParameter(
                f"cannot read the model schema {path}: {e}", param_hint="--model"
            ) from None

    _, report = inspect_dataset(directory, split=split, manifest=manifest, schema=schema)
    console = Console()
    source = report.manifest_summary()
    # Paths and messages are data, not Rich markup: escape them.
    console.print(
        f"[bold]Dataset[/bold] {escape(str(report.directory))}  "
        f"[dim]manifest: {escape(str(source))}[/dim]"
    )
    if split:
        console.print(f"split: {escape(split)}")
    if model is not None:
        console.print(f"checked against the model schema in {escape(str(model))}")

    summary = Table(title=f"{report.n_patients} patients")
    summary.add_column("modality")
    summary.add_column("file", overflow="fold")
    summary.add_column("features", justify="right")
    summary.add_column("patients present", justify="right")
    for m, info in report.modalities.items():
        summary.add_row(
            Text(m),
            Text(info["file"]) if info["file"] else Text("(absent)", style="yellow"),
            str(info["n_features"]),
            str(info["n_patients_present"]),
        )
    if report.modalities:
        console.print(summary)
    qc_rows = qc_summary_rows(report.modalities)
    if qc_rows:
        qc_table = Table(title="Preprocessing")
        for col in ("modality", "format", "features", "steps"):
            qc_table.add_column(col, overflow="fold")
        for row in qc_rows:
            qc_table.add_row(*(Text(c) for c in row))
        console.print(qc_table)
    if report.classes:
        console.print(
            Text("classes: " + ", ".join(f"{nm} {c}" for nm, c in report.classes.items()))
        )

    if report.findings:
        table = Table(title="Findings")
        for col in ("level", "file", "column", "row", "message"):
            table.add_column(col, overflow="fold")
        for f in report.findings:
            table.add_row(
                Text(f.level, style="red" if f.level == "error" else "yellow"),
                Text(f.file or ""),
                Text(f.column or ""),
                "" if f.row is None else str(f.row),
                Text(f.message),
            )
        console.print(table)
    n_err, n_warn = len(report.errors), len(report.warnings)
    if n_err or not config_ok:
        console.print(f"[red bold]FAILED[/red bold]: {n_err} data error(s), {n_warn} warning(s)"
                      + ("" if config_ok else "; site configuration errors above"))
        raise typer.Exit(1)
    console.print(f"[green bold]OK[/green bold]: {n_warn} warning(s)")


DEFAULT_BUDGET_DELTA = 1e-5


@app.command()
def budget(
    state_dir: Path = typer.Option(
        ..., "--state-dir", metavar="DIR",
        help="The site's state directory (holds privacy-ledger.json).",
    ),
    delta: float | None = typer.Option(
        None, "--delta", metavar="D",
        help="Delta at which to report epsilon (default: the delta the ledger records; "
        f"{DEFAULT_BUDGET_DELTA:g} for a ledger that records none).",
    ),
    epsilon_budget: float | None = typer.Option(
        None, "--epsilon-budget", metavar="E",
        help="The site's epsilon budget, to show what remains of it.",
    ),
) -> None:
    """Show the privacy ledger: DP-SGD rounds trained and the cumulative epsilon.

    Exits with code 1 when the epsilon spent exceeds --epsilon-budget.
    """
    # Imported here so `cancer-alpha --help` stays fast (the accountants import torch).
    from client.privacy import BudgetError, LedgerError, PrivacyBudget, PrivacyLedger, ledger_path

    console = Console()
    err = Console(stderr=True)
    try:
        # Validates delta, and epsilon when given, with the same rules as the site's budget.
        PrivacyBudget(epsilon=1.0 if epsilon_budget is None else epsilon_budget,
                      delta=DEFAULT_BUDGET_DELTA if delta is None else delta)
    except BudgetError as e:
        hint = "--delta" if "delta" in str(e) else "--epsilon-budget"
        raise typer.BadParameter(str(e), param_hint=hint) from None
    if not state_dir.is_dir():
        raise typer.BadParameter(f"{state_dir} is not a directory", param_hint="--state-dir")

    path = ledger_path(state_dir)
    try:
        # accountant=None: report with whichever accountant the ledger was kept with.
        ledger = PrivacyLedger.open(path, accountant=None)
    except LedgerError as e:
        err.print(Text(f"error: {e}", style="red"))
        err.print("The ledger was left untouched; the site cannot train with DP until it is "
                  "repaired or restored.")
        raise typer.Exit(2) from None

    console.print(f"[bold]Privacy ledger[/bold] {escape(str(path))}  "
                  f"[dim]accountant: {ledger.accountant}[/dim]")
    if not ledger.entries:
        console.print("no DP-SGD rounds recorded: no privacy budget spent"
                      + ("" if path.exists() else " (no ledger file yet)"))
    else:
        table = Table(title=f"{len(ledger.entries)} round(s)")
        for col, justify in (("run", "left"), ("round", "right"), ("noise", "right"),
                             ("sample rate", "right"), ("steps", "right"), ("time", "left")):
            table.add_column(col, justify=justify, overflow="fold")
        for e in ledger.entries:
            table.add_row(Text(e.run_id), str(e.round), f"{e.noise_multiplier:.3f}",
                          f"{e.sample_rate:.4g}", str(e.steps), Text(e.timestamp))
        console.print(table)

    delta, delta_note = _report_delta(delta, ledger.delta, ledger.recorded_deltas())
    summary = ledger.summary(delta)
    spent = summary["epsilon"]
    console.print(f"runs: {len(summary['runs'])}, rounds: {summary['entries']}, "
                  f"steps: {summary['steps']}")
    console.print(f"[bold]epsilon spent: {spent:.4f}[/bold] at delta {delta:g}{delta_note}")
    if epsilon_budget is not None:
        remaining = epsilon_budget - spent
        if remaining < 0:
            console.print(f"[red bold]budget exceeded[/red bold]: epsilon {spent:.4f} > "
                          f"budget {epsilon_budget:g}")
            raise typer.Exit(1)
        else:
            console.print(f"budget: epsilon {epsilon_budget:g}, remaining {remaining:.4f} "
                          f"({remaining / epsilon_budget:.0%})")


def _report_delta(given: float | None, latest: float | None,
                  recorded: list[float]) -> tuple[float, str]:
    """The delta to report epsilon at, and a note saying where it comes from."""
    if given is not None:
        if latest is not None and latest != given:
            return given, f" (given; the ledger accounts at delta {latest:g})"
        return given, ""
    if latest is None:
        return DEFAULT_BUDGET_DELTA, (" (assumed: the ledger records no delta, the default "
                                      "applies; set it with --delta)")
    if len(recorded) > 1:
        others = ", ".join(f"{d:g}" for d in recorded if d != latest)
        return latest, f" (the ledger's latest delta; other rounds recorded {others})"
    return latest, " (the ledger's delta)"


def _site_config(path: Path) -> SiteConfig:
    from common.site_config import SiteConfigError, load_site_config

    try:
        return load_site_config(path)
    except SiteConfigError as e:
        Console(stderr=True).print(Text(f"error: {e}", style="red"))
        raise typer.Exit(2) from None


def _preflight_ok(cfg: SiteConfig, *, probe: bool, check_data: bool = False,
                  unreachable_ok: bool = False, other_configs: list[Path] | None = None) -> bool:
    """Print the site's key, CA, port (and coordinator) checks; False when any failed."""
    from client.launcher import preflight

    console = Console()
    result = preflight(cfg, check_data=check_data, probe_coordinator=probe,
                       unreachable_ok=unreachable_ok, other_configs=other_configs or [])
    console.print(f"[bold]Site[/bold] {escape(cfg.site_id)} -> coordinator "
                  f"{escape(cfg.coordinator)}  [dim]config: {escape(str(cfg.source))}[/dim]")
    for line in result.info:
        console.print(Text(f"  ok: {line}"))
    for line in result.warnings:
        console.print(Text(f"  warning: {line}", style="yellow"))
    for line in result.errors:
        console.print(Text(f"  error: {line}", style="red"))
    return result.ok


@app.command()
def start(
    config: Path = typer.Option(..., "--config", metavar="SITE_TOML", help="The site's site.toml."),
    log_file: Path | None = typer.Option(
        None, "--log-file", metavar="FILE",
        help="Append the SuperNode's output here (default: STATE_DIR/supernode.log)."),
    quiet: bool = typer.Option(False, "--quiet", "-q",
                               help="Only write the SuperNode's output to the log file."),
    skip_checks: bool = typer.Option(
        False, "--skip-checks", help="Do not validate the data before joining (faster)."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Log the launch command."),
) -> None:
    """Join the consortium: run this site's Flower SuperNode until stopped (Ctrl-C).

    Exit codes: 2 bad configuration, 1 failed checks, otherwise the SuperNode's
    (Flower exit codes: https://flower.ai/docs/framework/ref-exit-codes/).
    """
    import logging

    from client.launcher import run_site

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(message)s")
    cfg = _site_config(config)
    # An expired or foreign coordinator certificate is reported here, in plain words,
    # instead of as a TLS failure inside Flower's log.
    if not _preflight_ok(cfg, probe=True, check_data=not skip_checks, unreachable_ok=True):
        raise typer.Exit(1)
    Console().print(f"joining {escape(cfg.coordinator)} as {escape(cfg.site_id)} "
                    f"(data {escape(str(cfg.data_dir))}, device {escape(cfg.device)})")
    raise typer.Exit(run_site(cfg, log_file=log_file, echo=not quiet))
