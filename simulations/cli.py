"""Simulation commands of ``cancer-alpha``: ``simulate`` and ``train-central`` (mounted by
:mod:`common.cli` through entry points; ``baselines``, ``evaluate`` and ``audit privacy``
are in :mod:`simulations.evaluation_cli`).

Options default to None: only the options given override the run configuration's
defaults (:class:`common.config.RunConfig`). Torch and Flower are imported inside
commands so ``--help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from common.config import DP_MODES, OPPOSED_DIRECTION, RunConfig
from simulations.cli_options import (
    DEFAULT,
    LOCAL_DP_SGD,
    NO_DP,
    DataOpt,
    GenomeTokensOpt,
    LinearPathOpt,
    ManifestOpt,
    ModelOpt,
    OutOpt,
    PartitionOpt,
    SeedOpt,
    SitesOpt,
    TestDataOpt,
    VerboseOpt,
    default_note,
    fail,
    given,
    setup_logging,
    with_architecture,
)


def simulate(
    data: DataOpt = None,
    test_data: TestDataOpt = None,
    manifest: ManifestOpt = None,
    partition: PartitionOpt = None,
    sites: SitesOpt = None,
    rounds: Annotated[int | None, typer.Option(
        "--rounds", help="Federated rounds."
        + default_note(f"{DEFAULT.rounds} with --dp distributed or local (class "
                   f"centroids), {LOCAL_DP_SGD.rounds} with --dp local and another model, "
                   f"else {NO_DP.rounds}"))] = None,
    local_epochs: Annotated[int | None, typer.Option(
        "--local-epochs", help="Local epochs per round."
        + default_note(f"{LOCAL_DP_SGD.local_epochs} with --dp distributed or local, else "
                   f"{NO_DP.local_epochs}"))
    ] = None,
    strategy: Annotated[str | None, typer.Option(
        help="fedavg, fedavgm (server momentum), fedprox, fedadam, fedyogi (server "
        "optimizers), fedmedian, trimmedavg, krum, bulyan (robust to hostile sites)."
        + default_note(DEFAULT.strategy))] = None,
    proximal_mu: Annotated[float | None, typer.Option(
        help="FedProx proximal weight." + default_note(str(DEFAULT.proximal_mu)))] = None,
    min_site_size: Annotated[int | None, typer.Option(
        help="site partition: smaller sites are merged into 'other'."
        + default_note(str(DEFAULT.min_site_size)))] = None,
    seed: SeedOpt = None,
    out: OutOpt = None,
    model: ModelOpt = None,
    genome_tokens: GenomeTokensOpt = None,
    linear_path: LinearPathOpt = None,
    dp: Annotated[str | None, typer.Option(
        help=f"Differential privacy: {', '.join(DP_MODES)}. distributed: every site adds "
        "its share of the noise to sums over its patients, sent only through secure "
        "aggregation (3 sites or more), which fit the class-centroid model in 2 rounds "
        "(other models: clipped gradient sums); local: every site's release carries the "
        "whole noise and travels without secure aggregation (the class-centroid model "
        "from noised sums; other models: DP-SGD at every site, a small model and many "
        "one-epoch rounds); central: the server clips site updates and noises their mean."
        + default_note(DEFAULT.dp))] = None,
    epsilon: Annotated[float | None, typer.Option(
        help="Privacy budget epsilon: each site's (distributed and local DP) or the run's "
        "(central DP)."
        + default_note(str(DEFAULT.epsilon)))] = None,
    delta: Annotated[float | None, typer.Option(
        help="Privacy delta; 0 = 1e-5 (distributed and local DP) or 1/(10 sites) "
        "(central DP)."
        + default_note(str(DEFAULT.delta)))] = None,
    max_grad_norm: Annotated[float | None, typer.Option(
        help="Clipping bound: per-patient gradients (distributed and local DP) or site "
        "updates (central DP)."
        + default_note(str(DEFAULT.max_grad_norm)))] = None,
    state_dir: Annotated[str | None, typer.Option(
        help="Local DP: keep the virtual hospitals' privacy ledgers in STATE_DIR/<site>, "
        "so their budgets carry over between runs (default: inside the run directory, "
        "fresh budgets every run).")] = None,
    secagg: Annotated[bool | None, typer.Option(
        "--secagg", help="Secure aggregation (Flower SecAgg+): the coordinator sees only "
        "the sum of the sites' updates. Needs 3 or more sites.")] = None,
    secagg_threshold: Annotated[float | None, typer.Option(
        help="SecAgg+: fraction of a site's neighbours needed to unmask it."
        + default_note(str(DEFAULT.secagg_threshold)))] = None,
    max_update_norm_ratio: Annotated[float | None, typer.Option(
        help="Reject an update that moves the model more than this many times the "
        "round's median (0: no bound)." + default_note(str(DEFAULT.max_update_norm_ratio)))
    ] = None,
    update_direction_ratio: Annotated[float | None, typer.Option(
        "--direction-ratio",
        help="Reject an update whose cosine with the other updates' median is below this "
        f"times the round's median cosine, or below {OPPOSED_DIRECTION:g} in any round "
        "(0: no check)."
        + default_note(f"{NO_DP.update_direction_ratio} with --dp none, else "
                       f"{DEFAULT.update_direction_ratio}"))] = None,
    trim_fraction: Annotated[float | None, typer.Option(
        help="trimmedavg: fraction of site values cut from each tail, per weight."
        + default_note(str(DEFAULT.trim_fraction)))] = None,
    malicious_sites: Annotated[int | None, typer.Option(
        help="krum, bulyan: hostile sites the aggregation must tolerate."
        + default_note(str(DEFAULT.malicious_sites)))] = None,
    krum_select: Annotated[int | None, typer.Option(
        help="krum: updates averaged (1: Krum, more: multi-Krum)."
        + default_note(str(DEFAULT.krum_select)))] = None,
    server_lr: Annotated[float | None, typer.Option(
        help="fedadam, fedyogi: server learning rate." + default_note(str(DEFAULT.server_lr)))
    ] = None,
    attack: Annotated[str | None, typer.Option(
        help="Simulate hostile hospitals: label-flip, sign-flip, scale:K, noise, nan or "
        "free-rider (--malicious sites mount it, chosen by --attackers).")] = None,
    malicious: Annotated[int, typer.Option(
        help="With --attack: how many hospitals attack.")] = 1,
    attackers: Annotated[str, typer.Option(
        help="With --attack: largest (the sites with most training patients, the worst "
        "case) or random (drawn from --seed).")] = "largest",
    compare: Annotated[bool, typer.Option(
        help="Also train the centralized model and the baselines on the same split.")] = True,
    report: Annotated[bool, typer.Option(
        help="Write report.html and model_card.md into the run directory at the end "
        "(cancer-alpha report RUN_DIR writes them later).")] = True,
    verbose: VerboseOpt = False,
) -> None:
    """Run a federation of virtual hospitals on one machine (Flower simulation engine).

    With no options: the bundled TCGA BRCA data, one hospital per tissue source site,
    distributed differential privacy under secure aggregation (see --dp and --epsilon),
    every virtual hospital with a fresh budget. Writes a run
    directory with config.json, metrics.json, the model bundle, per-round curves and a
    confusion matrix.
    """
    setup_logging(verbose)
    from server.rounds import FederationError
    from simulations.runner import simulate as run

    try:
        cfg = RunConfig.preset(dp, model_kind=model, **given(
            data=data, test_data=test_data, manifest=manifest, partition=partition,
            sites=sites, rounds=rounds, local_epochs=local_epochs, strategy=strategy,
            proximal_mu=proximal_mu, min_site_size=min_site_size, seed=seed, out=out,
            epsilon=epsilon, delta=delta, max_grad_norm=max_grad_norm, state_dir=state_dir,
            secagg=secagg, secagg_threshold=secagg_threshold,
            max_update_norm_ratio=max_update_norm_ratio,
            update_direction_ratio=update_direction_ratio, trim_fraction=trim_fraction,
            malicious_sites=malicious_sites, krum_select=krum_select, server_lr=server_lr))
        cfg = with_architecture(cfg, genome_tokens, linear_path)
        run_dir = run(cfg, compare=compare, verbose=verbose, attack=attack,
                      malicious=malicious, attackers=attackers)
    except (ValueError, FileNotFoundError, FederationError) as exc:
        fail(exc)
    _print_summary(run_dir)
    if report:
        from server.report.cli import write_run_report

        write_run_report(run_dir)


def _print_summary(run_dir: Path) -> None:
    from common.metrics import METRIC_KEYS

    metrics = json.loads((run_dir / "metrics.json").read_text())
    table = Table(title=f"Global test split: {run_dir}")
    table.add_column("model", no_wrap=True)
    for col in ("accuracy", "bal. acc.", "F1 macro", "F1 weighted", "AUC (OvR)"):
        table.add_column(col, justify="right")
    private = bool(metrics.get("per_site_epsilon") or metrics.get("central_dp"))
    rows = [(f"federated, round {metrics.get('best_round', 0)}", metrics)]
    comparison = metrics.get("comparison", {})
    if "centralized" in comparison:
        # The references see pooled data without DP: what privacy costs, not options.
        rows.append(("centralized, no DP" if private else "centralized",
                     comparison["centralized"]))
    rows.extend((name, m) for name, m in comparison.get("baselines", {}).items())
    for name, m in rows:
        table.add_row(name, *(f"{m.get(k, float('nan')):.3f}" for k in
                              METRIC_KEYS))
    Console().print(table)
    _print_recall(metrics, comparison.get("centralized"), private)
    spent = metrics.get("per_site_epsilon")
    if spent:
        run_config = json.loads((run_dir / "config.json").read_text())["run_config"]
        budget = run_config["epsilon"]
        Console().print(f"{run_config['dp']} DP: {len(spent)} sites spent epsilon "
                        f"{min(spent.values()):.3f} to {max(spent.values()):.3f} "
                        f"(budget {budget:g} each unless a site set its own)")
    if metrics.get("stopped_early"):
        stopped = str(metrics["stopped_early"])
        Console().print(Text("stopped early: ", style="yellow") + Text(stopped))


def _print_recall(metrics: dict, centralized: dict | None, private: bool) -> None:
    """Recall per class on the test split: which subtypes the model actually predicts
    (a macro-F1 can hide a class that is never predicted)."""
    per_class = metrics.get("test", {}).get("per_class")
    if not per_class:
        return
    table = Table(title="Recall per class (test split; support in brackets)")
    table.add_column("model", no_wrap=True)
    for name, scores in per_class.items():
        table.add_column(f"{name} ({scores['support']})", justify="right")
    rows = [("federated", per_class)]
    if centralized and centralized.get("test", {}).get("per_class"):
        rows.append(("centralized, no DP" if private else "centralized",
                     centralized["test"]["per_class"]))
    for label, classes in rows:
        table.add_row(label, *(f"{classes[name]['recall']:.2f}" if name in classes else "-"
                               for name in per_class))
    Console().print(table)


def train_central_cmd(
    data: DataOpt = None,
    test_data: TestDataOpt = None,
    manifest: ManifestOpt = None,
    partition: PartitionOpt = None,
    sites: SitesOpt = None,
    epochs: Annotated[int | None, typer.Option(
        help="Maximum epochs (early stopping on val)."
        + default_note(str(NO_DP.rounds * NO_DP.local_epochs)))] = None,
    seed: SeedOpt = None,
    out: OutOpt = None,
    model: ModelOpt = None,
    genome_tokens: GenomeTokensOpt = None,
    linear_path: LinearPathOpt = None,
    report: Annotated[bool, typer.Option(
        help="Write report.html and model_card.md into the --out directory at the end "
        "(cancer-alpha report RUN_DIR writes them later).")] = True,
    json_output: Annotated[bool, typer.Option(
        "--json", help="Print the metrics as JSON instead of tables.")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Train the same model on pooled data, with the split a federation would use.

    Training and validation patients are the union of the hospitals' splits for the
    given --partition, so the result is comparable with `simulate`.
    """
    setup_logging(verbose)
    from common.simulated_federation import load_federation
    from simulations.central import train_central

    try:
        schedule = {} if epochs is None else {"rounds": epochs, "local_epochs": 1}
        cfg = RunConfig.preset("none", model_kind=model, **schedule, **given(
            data=data, test_data=test_data, manifest=manifest, partition=partition,
            sites=sites, seed=seed))
        cfg = with_architecture(cfg, genome_tokens, linear_path)
        fed = load_federation(cfg)
        result = train_central(fed, cfg, (out / "model") if out else None)
    except (ValueError, FileNotFoundError) as exc:
        fail(exc)
    if out:
        from common.bundle import write_json

        write_json(out / "metrics.json", result)
        write_json(out / "config.json", {"run_config": cfg.to_dict(),
                                          "federation": fed.record()})
    summary = {k: v for k, v in result.items() if k not in ("history", "test")}
    if json_output:
        print(json.dumps(summary, indent=2))
    else:
        from server.report.tables import metrics_table, per_class_table, print_tables

        print_tables(metrics_table(
            f"Global test split: centralized, epoch {result['best_epoch']} of "
            f"{result['epochs_run']}", [("centralized", summary)]),
            per_class_table("Per class (test split)", result["test"]["per_class"]))
    if out and report:
        from server.report.cli import write_run_report

        write_run_report(out)
