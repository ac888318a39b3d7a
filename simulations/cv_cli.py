"""``cancer-alpha cv``: stratified k-fold cross-validation, centralized and federated."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from common.config import DP_MODES, RunConfig
from common.metrics import METRIC_KEYS
from common.model_kinds import KINDS
from simulations.cli_options import (
    DataOpt,
    GenomeTokensOpt,
    LinearPathOpt,
    ManifestOpt,
    PartitionOpt,
    SeedOpt,
    SitesOpt,
    VerboseOpt,
    default_note,
    fail,
    given,
    new_run_dir,
    setup_logging,
    with_architecture,
)
from simulations.cv import MODES, CvSettings

_NO_DP = RunConfig.preset("none")
COLUMNS = ("accuracy", "bal. acc.", "F1 macro", "F1 weighted", "AUC (OvR)")


def cv(
    data: DataOpt = None,
    manifest: ManifestOpt = None,
    folds: Annotated[int, typer.Option(
        "--folds", help="Number of folds (stratified; within each site for the site "
        "partition).")] = 5,
    model: Annotated[str | None, typer.Option(
        "--model", help=f"Model architecture: {', '.join(KINDS)}." + default_note("mmt"))
    ] = None,
    genome_tokens: GenomeTokensOpt = None,
    linear_path: LinearPathOpt = None,
    mode: Annotated[str, typer.Option(
        "--mode", help=f"Which models to cross-validate: {', '.join(MODES)}.")] = "both",
    partition: PartitionOpt = None,
    sites: SitesOpt = None,
    dp: Annotated[str, typer.Option(
        help=f"Differential privacy of the federated runs: {', '.join(DP_MODES)} (as in "
        "simulate).")] = "none",
    rounds: Annotated[int | None, typer.Option(
        "--rounds", help="Federated rounds (the centralized model trains rounds x "
        "local epochs epochs at most)." + default_note(f"{_NO_DP.rounds} without DP"))] = None,
    local_epochs: Annotated[int | None, typer.Option(
        "--local-epochs", help="Local epochs per round."
        + default_note(f"{_NO_DP.local_epochs} without DP"))] = None,
    baselines: Annotated[bool, typer.Option(
        help="Also fit logistic regression, random forest, SVM and gradient boosting on "
        "every fold.")] = False,
    seed: SeedOpt = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Run directory to write, new or empty (default: runs/cv-<run id>).",
        callback=new_run_dir)] = None,
    json_output: Annotated[bool, typer.Option(
        "--json", help="Print the summary as JSON instead of a table.")] = False,
    report: Annotated[bool, typer.Option(
        help="Write report.html and model_card.md of the last fold's federated run into "
        "the run directory at the end (cancer-alpha report RUN_DIR/fold-K/federated "
        "writes any fold's later).")] = True,
    verbose: VerboseOpt = False,
) -> None:
    """Stratified k-fold cross-validation of the federated and the centralized model.

    Every fold is a normal run whose test split is the fold: the hospitals hold the other
    patients and choose epochs and rounds on validation patients carved from them. Writes
    per-fold records (metrics, patient ids, seeds) and cv.json (mean +- std per metric).
    """
    setup_logging(verbose)
    from server.rounds import FederationError
    from simulations.cv import run_cv, with_model_kind
    from simulations.runner import new_run_id

    settings = CvSettings(folds=folds, mode=mode, baselines=baselines)
    run_dir = out or Path("runs") / f"cv-{new_run_id()}"
    try:
        settings.validate()
        cfg = with_model_kind(RunConfig.preset(dp, **given(
            data=data, manifest=manifest, partition=partition, sites=sites, rounds=rounds,
            local_epochs=local_epochs, seed=seed)), model)
        cfg = with_architecture(cfg, genome_tokens, linear_path)
        summary = run_cv(cfg, settings, run_dir, show_progress=not json_output,
                         on_fold=None if json_output else _print_fold)
    except (ValueError, FileNotFoundError, FederationError) as exc:
        fail(exc)
    if json_output:
        print(json.dumps(summary["summary"], indent=2))
    else:
        Console().print(summary_table(summary, run_dir))
    if report and "federated" in settings.modes:
        from server.report.cli import write_run_report

        write_run_report(run_dir / f"fold-{folds}" / "federated", out_dir=run_dir, notes=(
            f"Cross-validation: this page shows fold {folds} of {folds} (the last fold, its "
            "federated model on its own test fold); cv.json holds the mean +- std of "
            "every fold.",))


def _print_fold(record: dict) -> None:
    scores = ", ".join(f"{model} F1m {m['f1_macro']:.3f}"
                       for model, m in record["metrics"].items())
    Console(stderr=True).print(f"fold {record['fold']}: {scores}")


def summary_table(summary: dict, run_dir: Path) -> Table:
    """Mean +- std over the folds, one row per model."""
    table = Table(title=f"{summary['folds']}-fold cross-validation (mean +- std): {run_dir}")
    table.add_column("model", no_wrap=True)
    for col in COLUMNS:
        table.add_column(col, justify="right")
    for model, metrics in summary["summary"].items():
        table.add_row(model, *(f"{metrics[k]['mean']:.3f} +- {metrics[k]['std']:.3f}"
                               for k in METRIC_KEYS))
    return table
