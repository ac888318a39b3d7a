"""Options and helpers shared by the simulation commands (:mod:`simulations.cli`,
:mod:`simulations.evaluation_cli`, :mod:`simulations.cv_cli`).

Options default to None: only the options given override the run configuration's
defaults (:class:`common.config.RunConfig`).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.text import Text

from common.config import RunConfig

console = Console(stderr=True)
DEFAULT = RunConfig()
NO_DP = RunConfig.preset("none")
LOCAL_DP_SGD = RunConfig.preset("local", model_kind="mmt")


def default_note(value: Any) -> str:
    """Help text suffix naming an option's default (options themselves default to None)."""
    return f"  [default: {value}]"


DataOpt = Annotated[str | None, typer.Option(
    "--data", help="Dataset directory, or a bundled alias: brca, rosmap."
    + default_note(DEFAULT.data))]
TestDataOpt = Annotated[str | None, typer.Option(
    "--test-data", help="Separate dataset directory used as the global test split "
    "(default: hold out a stratified test split of --data).")]
ManifestOpt = Annotated[str | None, typer.Option(
    "--manifest", help="Manifest (dataset.toml) for --data, if not inside the directory.")]
PartitionOpt = Annotated[str | None, typer.Option(
    "--partition", help="site (tissue-source site), iid, or dirichlet:ALPHA."
    + default_note(DEFAULT.partition))]
SitesOpt = Annotated[int | None, typer.Option(
    "--sites", help="Hospitals: for site, keep the N-1 largest and merge the rest; "
    "for iid/dirichlet, the count. 0 = automatic." + default_note(str(DEFAULT.sites)))]
SeedOpt = Annotated[int | None, typer.Option(
    "--seed", help="Seed for the split, init and training." + default_note(str(DEFAULT.seed)))]


def new_run_dir(value: Path | None) -> Path | None:
    """``--out``: a directory that does not exist yet or is empty, so that a run never
    writes over an earlier run's files."""
    if value is None or not value.exists():
        return value
    if not value.is_dir():
        raise typer.BadParameter(f"{value} is a file, not a run directory")
    held = sorted(p.name for p in value.iterdir())
    if held:
        shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
        raise typer.BadParameter(f"{value} already holds files ({shown}); name a new "
                                 "directory, or move that one away to run again")
    return value


OutOpt = Annotated[Path | None, typer.Option(
    "--out", help="Run directory to write: new or empty (an earlier run is never "
    "overwritten).", callback=new_run_dir)]
ModelOpt = Annotated[str | None, typer.Option(
    "--model", help="Model architecture: mmt (multi-modal transformer), tabtransformer, "
    "perceiver (Perceiver IO) or centroid (docs/models.md)."
    + default_note("centroid with --dp distributed, else mmt"))]
GenomeTokensOpt = Annotated[int | None, typer.Option(
    help="mmt: tokens along the genome, this many groups per modality the gene table "
    "places (docs/models.md)." + default_note("0, learned soft groups"))]
LinearPathOpt = Annotated[bool | None, typer.Option(
    "--linear-path", help="mmt: add logits linear in the features "
    "beside the transformer's (docs/models.md)." + default_note("no"))]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Log more.")]


def with_architecture(cfg: RunConfig, genome_tokens: int | None = None,
                      linear_path: bool | None = None) -> RunConfig:
    """``cfg`` with the architecture options the user gave (None: the default)."""
    if genome_tokens is not None and genome_tokens < 0:
        raise ValueError(f"--genome-tokens must be >= 0, got {genome_tokens}")
    options = given(genome_tokens=genome_tokens, linear_path=linear_path)
    return replace(cfg, model=replace(cfg.model, **options)) if options else cfg


def given(**options: Any) -> dict[str, Any]:
    """The options the user gave (not None), as run config settings."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in options.items()
            if v is not None}


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
        force=True,
    )
    # Per-round, per-site events (a site declining a round, a stop) are summed up in the
    # summary or the error line; -v shows them as they happen.
    for noisy in ("flwr", "ray", "server.rounds", "strategies"):
        logging.getLogger(noisy).setLevel(logging.INFO if verbose else logging.ERROR)


def fail(exc: Exception) -> None:
    console.print(Text(f"error: {exc}", style="bold red"))
    raise typer.Exit(2) from exc
