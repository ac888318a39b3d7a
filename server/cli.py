"""``cancer-alpha coordinator ...`` and ``cancer-alpha pki ...``: the operator's commands.

``pki init|issue-server|issue-site|revoke-site|list`` manage the consortium's CA, the
coordinator's TLS certificate and the sites' node-authentication keys
(:mod:`common.pki`). ``coordinator start`` runs the SuperLink and one federated run
(:mod:`server.coordinator`); ``coordinator sync-sites`` applies key changes (new,
rotated, revoked sites) to a running coordinator.

``python -m server.cli`` runs both groups on their own.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table
from rich.text import Text

console = Console()
err = Console(stderr=True)

pki_app = typer.Typer(
    name="pki",
    help="Consortium keys and certificates: CA, coordinator TLS certificate, site keys.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
coordinator_app = typer.Typer(
    name="coordinator",
    help="Run the consortium's coordinator (Flower SuperLink over TLS with node "
    "authentication) and its federated run.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

# Containers set these (deploy/): certificates mounted read-only, state on a volume.
PKI_ENV, STATE_ENV, APP_ENV = "CANCER_ALPHA_CERTS_DIR", "CANCER_ALPHA_STATE_DIR", \
    "CANCER_ALPHA_APP"
PkiDirOpt = typer.Option(Path("pki"), "--dir", "--pki", metavar="DIR",
                         help="PKI directory (ca.crt, server.crt, sites/...).")


def _fail(message: str, code: int = 2) -> None:
    err.print(Text(f"error: {message}", style="red"))
    raise typer.Exit(code)


# --- pki --------------------------------------------------------------------------------
@pki_app.command("init")
def pki_init(
    directory: Path = PkiDirOpt,
    names: list[str] = typer.Option(
        [], "--name", metavar="HOST",
        help="DNS name or IP address sites use to reach the coordinator (repeatable); "
        "localhost, 127.0.0.1 and ::1 are always included."),
    ca_days: int = typer.Option(3650, "--ca-days", help="CA validity in days."),
    server_days: int = typer.Option(365, "--server-days",
                                    help="Server certificate validity in days."),
    force: bool = typer.Option(False, "--force",
                               help="Replace an existing CA (every site must get the new "
                               "ca.crt)."),
) -> None:
    """Create the consortium CA and the coordinator's TLS certificate."""
    from common.pki import PkiError, init_pki

    try:
        pki = init_pki(directory, names, force=force, ca_days=ca_days,
                       server_days=server_days)
    except PkiError as e:
        _fail(str(e))
    console.print(f"[green]CA[/green] {escape(str(pki.ca_cert))} (key {escape(str(pki.ca_key))}, "
                  "keep it offline)")
    console.print(f"[green]server certificate[/green] {escape(str(pki.server_cert))} for "
                  f"localhost, 127.0.0.1, ::1{''.join(', ' + n for n in names)}")
    console.print("Next: `cancer-alpha pki issue-site SITE` for every hospital; give each "
                  "hospital ca.crt and its key.")


@pki_app.command("issue-server")
def pki_issue_server(
    directory: Path = PkiDirOpt,
    names: list[str] = typer.Option([], "--name", metavar="HOST",
                                    help="DNS name or IP address (repeatable)."),
    days: int = typer.Option(365, "--days", help="Validity in days."),
) -> None:
    """Re-issue the coordinator's TLS certificate (rotation); sites need nothing new."""
    from common.pki import Pki, PkiError, issue_server_cert

    try:
        path = issue_server_cert(Pki(directory), names, days=days)
    except PkiError as e:
        _fail(str(e))
    console.print(f"[green]new server certificate[/green] {escape(str(path))}; restart the "
                  "coordinator to use it")


@pki_app.command("issue-site")
def pki_issue_site(
    site: str = typer.Argument(..., help="Site id (lowercase letters, digits, '-', '_')."),
    directory: Path = PkiDirOpt,
    public_key: Path | None = typer.Option(
        None, "--public-key", metavar="FILE",
        help="Import a key the site generated itself (OpenSSH EC public key, e.g. from "
        "`ssh-keygen -t ecdsa -b 384`); the coordinator then never holds its private key."),
    force: bool = typer.Option(False, "--force", help="Replace the site's existing key "
                               "(rotation)."),
) -> None:
    """Create a site's node-authentication key pair (or register its public key)."""
    from common.pki import Pki, PkiError, issue_site

    pki = Pki(directory)
    try:
        pub = issue_site(pki, site, public_key=public_key, force=force)
    except PkiError as e:
        _fail(str(e))
    console.print(f"[green]site {escape(site)}[/green]: public key {escape(str(pub))}")
    if public_key is None:
        console.print(f"private key {escape(str(pki.site_private_key(site)))} (0600): send it "
                      "to the site over a secure channel, then delete it here")
    console.print("Running coordinators pick it up with `cancer-alpha coordinator sync-sites`.")


@pki_app.command("revoke-site")
def pki_revoke_site(
    site: str = typer.Argument(..., help="Site id to revoke."),
    directory: Path = PkiDirOpt,
) -> None:
    """Revoke a site's key; `coordinator sync-sites` (or the next start) disconnects it."""
    from common.pki import Pki, PkiError, revoke_site

    try:
        revoke_site(Pki(directory), site)
    except PkiError as e:
        _fail(str(e))
    console.print(f"[yellow]revoked[/yellow] {escape(site)}; apply it to a running "
                  "coordinator with `cancer-alpha coordinator sync-sites`")


@pki_app.command("list")
def pki_list(
    directory: Path = PkiDirOpt,
    warn_days: int = typer.Option(30, "--warn-days",
                                  help="Flag certificates expiring within this many days."),
) -> None:
    """The CA, the server certificate and every site key, with expiry and status.

    Exit code 1 when a certificate is expired or unreadable.
    """
    from common.pki import Pki, list_pki

    entries = list_pki(Pki(directory), warn_days=warn_days)
    table = Table(title=f"PKI {directory}")
    for col in ("kind", "name", "expires (UTC)", "status", "detail"):
        table.add_column(col, overflow="fold")
    bad = False
    for e in entries:
        style = "green" if e.status == "ok" else "yellow" if e.status.startswith(
            ("expires", "revoked")) else "red"
        bad |= style == "red"
        table.add_row(e.kind, Text(e.name), f"{e.expires:%Y-%m-%d %H:%M}" if e.expires else "-",
                      Text(e.status, style=style), Text(e.detail))
    console.print(table)
    if bad:
        raise typer.Exit(1)


# --- coordinator ------------------------------------------------------------------------------
_PAIR = re.compile(r"(\S+?)=(\'[^\']*\'|\"[^\"]*\"|\S+)")


def parse_run_config(text: str) -> dict[str, Any]:
    """``'rounds=5 model.d-model=64 strategy="fedprox"'`` -> flat Flower run config."""
    out: dict[str, Any] = {}
    rest = _PAIR.sub("", text).strip()
    if rest:
        raise typer.BadParameter(f"cannot parse {rest!r}; use key=value pairs separated by "
                                 "spaces, strings in quotes", param_hint="--run-config")
    for key, raw in _PAIR.findall(text):
        try:
            out[key] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            out[key] = raw.strip("'\"")  # an unquoted word is a string
    return out


@coordinator_app.command("start")
def coordinator_start(
    pki_dir: Path = typer.Option(Path("pki"), "--pki", metavar="DIR", envvar=PKI_ENV,
                                 help="PKI directory (ca.crt, server.crt/.key, sites/*/site.pub)."),
    state_dir: Path = typer.Option(Path("coordinator"), "--state-dir", metavar="DIR",
                                   envvar=STATE_ENV,
                                   help="Link state, site registry, logs and runs."),
    host: str = typer.Option("0.0.0.0", "--host", help="Address to listen on."),
    port: int = typer.Option(9092, "--port", help="Port sites connect to (HTTPS)."),
    run_name: str = typer.Option("consortium", "--run-name",
                                 help="Run directory name under STATE_DIR/runs."),
    rounds: int | None = typer.Option(None, "--rounds", help="Federated rounds."),
    local_epochs: int | None = typer.Option(None, "--local-epochs",
                                            help="Local epochs per round."),
    min_sites: int | None = typer.Option(None, "--min-sites",
                                         help="Fewest sites a round may complete with."),
    round_timeout: float | None = typer.Option(
        None, "--round-timeout", metavar="SECONDS",
        help="Longest wait for a round's replies; late or dead sites are left out."),
    strategy: str | None = typer.Option(None, "--strategy",
                                        help="fedavg, fedavgm or fedprox."),
    run_config: str = typer.Option("", "--run-config", metavar="'K=V ...'",
                                   help="Other run config keys (as in pyproject.toml)."),
    resume: bool = typer.Option(False, "--resume",
                                help="Continue RUN_NAME after its last completed round."),
    keep_alive: bool = typer.Option(False, "--keep-alive",
                                    help="Keep the SuperLink running after the run."),
    app_dir: Path | None = typer.Option(
        None, "--app", metavar="DIR", envvar=APP_ENV,
        help="Flower app to submit: a directory with the project's pyproject.toml and "
        "packages (default: this checkout)."),
    metrics_port: int = typer.Option(
        9100, "--metrics-port", envvar="CANCER_ALPHA_METRICS_PORT",
        help="Prometheus metrics at http://ADDR:PORT/metrics while running; 0: off."),
    metrics_addr: str = typer.Option("127.0.0.1", "--metrics-addr",
                                     envvar="CANCER_ALPHA_METRICS_ADDR",
                                     help="Address of the metrics endpoint."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Log more."),
) -> None:
    """Start the SuperLink, register the sites' keys, run one federation to the end.

    Exit code 0 when the run completed and wrote its run directory, 1 when the run
    failed, 2 when the coordinator could not start.
    """
    from server.coordinator import PROJECT_ROOT, CoordinatorConfig, CoordinatorError

    _logging(verbose)
    overrides = parse_run_config(run_config)
    for key, value in (("rounds", rounds), ("local-epochs", local_epochs),
                       ("min-sites", min_sites), ("round-timeout", round_timeout),
                       ("strategy", strategy)):
        if value is not None:
            overrides[key] = value
    cfg = CoordinatorConfig(pki_dir=pki_dir, state_dir=state_dir, host=host, port=port,
                            run_name=run_name, run_config=overrides,
                            app_dir=app_dir or PROJECT_ROOT, resume=resume,
                            keep_alive=keep_alive, metrics_port=metrics_port,
                            metrics_addr=metrics_addr)
    from server.coordinator import run_coordinator

    console.print(f"coordinator on {escape(host)}:{port}, run {escape(run_name)}"
                  f"{' (resuming)' if resume else ''}; state in {escape(str(state_dir))}")
    try:
        result = run_coordinator(cfg, echo=(lambda line: console.print(Text(line)))
                                 if verbose else None,
                                 progress=lambda line: console.print(Text(line)))
    except CoordinatorError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        _fail("stopped; continue the run later with --resume", 130)
    _print_result(result)
    if not result.ok:
        raise typer.Exit(1)


def _print_result(result: Any) -> None:
    m = result.metrics or {}
    console.print(f"Flower run {result.run_id}: [bold]{result.status}[/bold] in "
                  f"{result.seconds:.1f} s -> {escape(str(result.run_dir))}")
    if not m:
        console.print(f"[red]no metrics.json; see {escape(str(result.run_dir))}/"
                      "coordinator.log[/red]")
        return
    table = Table(title="rounds")
    for col in ("round", "sites", "val macro-F1", "seconds"):
        table.add_column(col, justify="right")
    for r in m.get("rounds", []):
        table.add_row(str(r["round"]), str(len(r.get("sites", []))),
                      f"{r.get('val', {}).get('f1_macro', float('nan')):.3f}",
                      f"{r.get('seconds', float('nan')):.1f}")
    console.print(table)
    console.print(f"best round {m.get('best_round')}; stopped early: "
                  f"{escape(str(m.get('stopped_early')))}; resumed after rounds: "
                  f"{m.get('resumed_after_rounds')}")


@coordinator_app.command("sync-sites")
def coordinator_sync_sites(
    pki_dir: Path = typer.Option(Path("pki"), "--pki", metavar="DIR", envvar=PKI_ENV,
                                 help="PKI directory (ca.crt, sites/*/site.pub)."),
    state_dir: Path = typer.Option(Path("coordinator"), "--state-dir", metavar="DIR",
                                   envvar=STATE_ENV,
                                   help="The running coordinator's state directory."),
    host: str = typer.Option("0.0.0.0", "--host",
                             help="Address the running coordinator listens on."),
    port: int = typer.Option(9092, "--port", help="Port the running coordinator listens on."),
) -> None:
    """Make the running coordinator's nodes equal the PKI's site keys.

    Registers new keys, unregisters revoked or rotated ones and any node no site key
    accounts for; prints what changed as JSON. Exit code 1 when a site's key could not
    be registered (``refused`` says why).
    """
    from server.coordinator import (
        CoordinatorConfig,
        CoordinatorError,
        coordinator_env,
        sync_sites,
        write_flower_home,
    )

    cfg = CoordinatorConfig(pki_dir=pki_dir, state_dir=state_dir, host=host, port=port)
    write_flower_home(cfg)
    try:
        report = sync_sites(cfg, coordinator_env(cfg))
    except CoordinatorError as e:
        _fail(str(e))
    typer.echo(json.dumps(report.as_dict()))
    if report.refused:
        raise typer.Exit(1)


# The long-running service with the console (server/console_api).
from server.console_api.cli import console_token, serve  # noqa: E402

coordinator_app.command("serve")(serve)
coordinator_app.command("console-token")(console_token)


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=err, show_path=False)], force=True)


def main() -> None:
    """``python -m server.cli {coordinator,pki} ...``."""
    app = typer.Typer(no_args_is_help=True, add_completion=False, rich_markup_mode=None,
                      pretty_exceptions_show_locals=False)
    app.add_typer(coordinator_app, name="coordinator")
    app.add_typer(pki_app, name="pki")
    app(args=sys.argv[1:])


if __name__ == "__main__":
    main()
