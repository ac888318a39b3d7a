"""Evaluation commands of ``cancer-alpha``: ``baselines``, ``evaluate`` and ``audit
privacy`` (mounted by :mod:`common.cli` through entry points)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from common.config import RunConfig
from simulations.cli_options import (
    DataOpt,
    ManifestOpt,
    PartitionOpt,
    SeedOpt,
    SitesOpt,
    TestDataOpt,
    VerboseOpt,
    fail,
    given,
    setup_logging,
)


def baselines(
    data: DataOpt = None,
    test_data: TestDataOpt = None,
    manifest: ManifestOpt = None,
    partition: PartitionOpt = None,
    sites: SitesOpt = None,
    seed: SeedOpt = None,
    json_output: Annotated[bool, typer.Option(
        "--json", help="Print the metrics as JSON instead of tables.")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Logistic regression, random forest, SVM and gradient boosting on the same split."""
    setup_logging(verbose)
    from common.metrics import METRIC_KEYS
    from common.simulated_federation import load_federation
    from simulations.central import run_baselines_on_split

    try:
        cfg = RunConfig(**given(data=data, test_data=test_data, manifest=manifest,
                                 partition=partition, sites=sites, seed=seed))
        results = run_baselines_on_split(load_federation(cfg), cfg.seed)
    except (ValueError, FileNotFoundError) as exc:
        fail(exc)
    scores = {name: {k: m[k] for k in METRIC_KEYS} for name, m in results.items()}
    if json_output:
        print(json.dumps(scores, indent=2))
    else:
        from server.report.tables import metrics_table, print_tables

        print_tables(metrics_table("Global test split: baselines", scores.items()))


def evaluate(
    model: Annotated[Path, typer.Option("--model", help="Run directory or model bundle.")],
    data: Annotated[str, typer.Option(
        "--data", help="Dataset directory, or a bundled alias: brca, rosmap.")],
    split: Annotated[str, typer.Option(
        help="Split of --data to use (manifest splits; default: all patients).")] = "",
    manifest: ManifestOpt = None,
    json_output: Annotated[bool, typer.Option(
        "--json", help="Print the metrics as JSON instead of tables.")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Score a trained model on a labelled dataset; prints metrics as tables (or JSON).

    Modalities the data lacks are treated as missing (with a warning); feature names
    that differ from the model's schema are an error.
    """
    setup_logging(verbose)
    from common.bundle import BundleError, load_bundle
    from common.dataset import load_dataset
    from common.metrics import classification_metrics
    from common.paths import resolve_data_dir

    try:
        bundle = load_bundle(model)
        directory = resolve_data_dir(data)
        loaded = load_dataset(directory, split=split or None,
                              manifest=Path(manifest) if manifest else None,
                              schema=bundle.schema)
        proba = bundle.predict_proba(loaded, str(directory))
        metrics = classification_metrics(loaded.labels, proba, bundle.schema.label_names)
    except (ValueError, FileNotFoundError, BundleError) as exc:
        fail(exc)
    metrics["modalities_present"] = loaded.present_modalities()
    if json_output:
        print(json.dumps(metrics, indent=2))
    else:
        from server.report.tables import metrics_table, per_class_table, print_tables

        print_tables(metrics_table(f"{data}: {metrics['n']} patients, modalities "
                                   + ", ".join(metrics["modalities_present"]),
                                   [(str(model), metrics)]),
                     per_class_table("Per class", metrics["per_class"]))


def audit_privacy(
    model: Annotated[list[Path], typer.Option(
        "--model", help="Run directory to audit (repeat the option to compare runs).")],
    data: Annotated[str, typer.Option(
        "--data", help="Dataset directory, if it moved since the run.")] = "",
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="Also write the results to this JSON file.")] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Membership-inference attack: training patients (members) versus test patients.

    Prints attack AUC (0.5 = chance) and the true-positive rate at 1 % false-positive
    rate for a loss attack and a per-class calibrated likelihood-ratio attack.
    """
    setup_logging(verbose)
    from common.bundle import BundleError
    from simulations.membership_inference import membership_inference

    try:
        results = [membership_inference(run_dir, data) for run_dir in model]
    except (ValueError, FileNotFoundError, BundleError) as exc:
        fail(exc)
    table = Table(title="Membership inference (members: training patients; "
                  "non-members: test patients)")
    for col in ("model", "DP", "max site epsilon", "members / non", "loss AUC",
                "loss TPR@1%FPR", "LR AUC", "LR TPR@1%FPR"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in results:
        eps = r["per_site_epsilon"]
        table.add_row(Path(r["model"]).name, r["dp"], f"{max(eps.values()):.2f}" if eps else "inf",
                      f"{r['members']} / {r['nonmembers']}",
                      f"{r['loss_attack']['auc']:.3f}",
                      f"{r['loss_attack']['tpr_at_1pct_fpr']:.3f}",
                      f"{r['likelihood_ratio_attack']['auc']:.3f}",
                      f"{r['likelihood_ratio_attack']['tpr_at_1pct_fpr']:.3f}")
    Console().print(table)
    if json_out is not None:
        from common.bundle import write_json

        write_json(json_out, results)
