"""``cancer-alpha report RUN_DIR``: write the run report and the model card."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from server.report.settings import ReportSettings

logger = logging.getLogger(__name__)
_DEFAULT = ReportSettings()


def report(
    run_dir: Annotated[Path, typer.Argument(help="Run directory (simulate, train-central, "
                                            "coordinator).")],
    out: Annotated[Path | None, typer.Option(
        "--out", help="Directory to write report.html and model_card.md (default: RUN_DIR).")
    ] = None,
    min_group_size: Annotated[int, typer.Option(
        help="Fairness: a site or subgroup with fewer test patients is flagged as too "
        "small to judge and left out of the best-worst gap.")] = _DEFAULT.min_group_size,
    top_k: Annotated[int, typer.Option(help="Top features listed per class.")] = _DEFAULT.top_k,
    ig_steps: Annotated[int, typer.Option(
        help="Integrated-gradients steps.")] = _DEFAULT.ig_steps,
    ig_patients: Annotated[int, typer.Option(
        help="Integrated gradients: at most this many test patients per class.")
    ] = _DEFAULT.ig_patients_per_class,
) -> None:
    """Write a self-contained HTML report (report.html) and a Markdown model card
    (model_card.md) of a run: data and split, curves, ROC and precision-recall, confusion
    matrix, t-SNE of patient embeddings, modality weights and attention, top features per
    class (integrated gradients), fairness per site and clinical subgroup, privacy,
    comparison and lineage. Rebuilds the run's test split from config.json (the dataset
    is read in place)."""
    from common.bundle import BundleError
    from server.report import write_report

    settings = ReportSettings(min_group_size=min_group_size, top_k=top_k, ig_steps=ig_steps,
                              ig_patients_per_class=ig_patients)
    try:
        written = write_report(run_dir, settings, out)
    except (ValueError, FileNotFoundError, BundleError) as exc:
        Console(stderr=True).print(Text(f"error: {exc}", style="bold red"))
        raise typer.Exit(2) from exc
    Console().print(f"report: {written.html}\nmodel card: {written.card} "
                    f"({written.seconds:.1f} s)")


def write_run_report(run_dir: Path, out_dir: Path | None = None,
                     notes: tuple[str, ...] = ()) -> None:
    """The report at the end of a training command: a failure is reported, not raised
    (the run itself is complete)."""
    from server.report import ReportSettings, write_report

    try:
        written = write_report(run_dir, ReportSettings(), out_dir, notes)
    except Exception as exc:  # the run directory stays valid without its report
        logger.warning("no report for %s: %s", run_dir, exc)
        Console(stderr=True).print(Text(f"report not written: {exc}", style="yellow"))
        return
    Console().print(f"report: {written.html}")
