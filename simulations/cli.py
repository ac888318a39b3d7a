"""Simulation commands of ``cancer-alpha``: ``simulate``, ``train-central``, ``baselines``,
``evaluate`` and ``audit privacy`` (mounted by :mod:`common.cli` through entry points).

Options default to None: only the options given override the run configuration's
defaults (:class:`common.config.RunConfig`). Torch and Flower are imported inside
commands so ``--help`` stays fast.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table
from rich.text import Text

from common.config import DP_MODES, RunConfig

console = Console(stderr=True)
_DEFAULT = RunConfig()
_NO_DP = RunConfig.preset("none")
_LOCAL = RunConfig.preset("local")


def _default(value: Any) -> str:
    """Help text suffix naming an option's default (options themselves default to None)."""
    return f"  [default: {value}]"


DataOpt = Annotated[str | None, typer.Option(
    "--data", help="Dataset directory, or a bundled alias: brca, rosmap."
    + _default(_DEFAULT.data))]
TestDataOpt = Annotated[str | None, typer.Option(
    "--test-data", help="Separate dataset directory used as the global test split "
    "(default: hold out a stratified test split of --data).")]
ManifestOpt = Annotated[str | None, typer.Option(
    "--manifest", help="Manifest (dataset.toml) for --data, if not inside the directory.")]
PartitionOpt = Annotated[str | None, typer.Option(
    "--partition", help="site (tissue-source site), iid, or dirichlet:ALPHA."
    + _default(_DEFAULT.partition))]
SitesOpt = Annotated[int | None, typer.Option(
    "--sites", help="Hospitals: for site, keep the N-1 largest and merge the rest; "
    "for iid/dirichlet, the count. 0 = automatic." + _default(str(_DEFAULT.sites)))]
SeedOpt = Annotated[int | None, typer.Option(
    "--seed", help="Seed for the split, init and training." + _default(str(_DEFAULT.seed)))]
OutOpt = Annotated[Path | None, typer.Option("--out", help="Run directory to write.")]
ModelOpt = Annotated[str | None, typer.Option(
    "--model", help="Model architecture: mmt (multi-modal transformer), tabtransformer, "
    "perceiver (Perceiver IO) or centroid (docs/models.md)."
    + _default("centroid with --dp distributed, else mmt"))]
GenomeTokensOpt = Annotated[int | None, typer.Option(
    help="mmt: tokens along the genome, this many groups per modality the gene table "
    "places (docs/models.md)." + _default("0, learned soft groups"))]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Log more.")]


def _with_genome_tokens(cfg: RunConfig, groups: int | None) -> RunConfig:
    if groups is None:
        return cfg
    if groups < 0:
        raise ValueError(f"--genome-tokens must be >= 0, got {groups}")
    return replace(cfg, model=replace(cfg.model, genome_tokens=groups))


def _given(**options: Any) -> dict[str, Any]:
    """The options the user gave (not None), as run config settings."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in options.items()
            if v is not None}


def _setup_logging(verbose: bool) -> None:
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


def _fail(exc: Exception) -> None:
    console.print(Text(f"error: {exc}", style="bold red"))
    raise typer.Exit(2) from exc


def simulate(
    data: DataOpt = None,
    test_data: TestDataOpt = None,
    manifest: ManifestOpt = None,
    partition: PartitionOpt = None,
    sites: SitesOpt = None,
    rounds: Annotated[int | None, typer.Option(
        "--rounds", help="Federated rounds."
        + _default(f"{_DEFAULT.rounds} with --dp distributed, {_LOCAL.rounds} with --dp "
                   f"local, else {_NO_DP.rounds}"))] = None,
    local_epochs: Annotated[int | None, typer.Option(
        "--local-epochs", help="Local epochs per round."
        + _default(f"{_LOCAL.local_epochs} with --dp distributed or local, else "
                   f"{_NO_DP.local_epochs}"))
    ] = None,
    strategy: Annotated[str | None, typer.Option(
        help="fedavg, fedavgm (server momentum), fedprox, fedadam, fedyogi (server "
        "optimizers), fedmedian, trimmedavg, krum, bulyan (robust to hostile sites)."
        + _default(_DEFAULT.strategy))] = None,
    proximal_mu: Annotated[float | None, typer.Option(
        help="FedProx proximal weight." + _default(str(_DEFAULT.proximal_mu)))] = None,
    min_site_size: Annotated[int | None, typer.Option(
        help="site partition: smaller sites are merged into 'other'."
        + _default(str(_DEFAULT.min_site_size)))] = None,
    seed: SeedOpt = None,
    out: OutOpt = None,
    model: ModelOpt = None,
    genome_tokens: GenomeTokensOpt = None,
    dp: Annotated[str | None, typer.Option(
        help=f"Differential privacy: {', '.join(DP_MODES)}. distributed: every site adds "
        "its share of the noise to sums over its patients, sent only through secure "
        "aggregation (3 sites or more), which fit the class-centroid model in 2 rounds "
        "(other models: clipped gradient sums); local: DP-SGD at every site, with a small model "
        "and many one-epoch rounds chosen for it; central: the server clips site updates "
        "and noises their mean." + _default(_DEFAULT.dp))] = None,
    epsilon: Annotated[float | None, typer.Option(
        help="Privacy budget epsilon: each site's (distributed and local DP) or the run's "
        "(central DP)."
        + _default(str(_DEFAULT.epsilon)))] = None,
    delta: Annotated[float | None, typer.Option(
        help="Privacy delta; 0 = 1e-5 (distributed DP), 1/(10 n) for a site with n "
        "patients (local DP) or 1/(10 sites) (central DP)."
        + _default(str(_DEFAULT.delta)))] = None,
    max_grad_norm: Annotated[float | None, typer.Option(
        help="Clipping bound: per-patient gradients (distributed and local DP) or site "
        "updates (central DP)."
        + _default(str(_DEFAULT.max_grad_norm)))] = None,
    state_dir: Annotated[str | None, typer.Option(
        help="Local DP: keep the virtual hospitals' privacy ledgers in STATE_DIR/<site>, "
        "so their budgets carry over between runs (default: inside the run directory, "
        "fresh budgets every run).")] = None,
    secagg: Annotated[bool | None, typer.Option(
        "--secagg", help="Secure aggregation (Flower SecAgg+): the coordinator sees only "
        "the sum of the sites' updates. Needs 3 or more sites.")] = None,
    secagg_threshold: Annotated[float | None, typer.Option(
        help="SecAgg+: fraction of a site's neighbours needed to unmask it."
        + _default(str(_DEFAULT.secagg_threshold)))] = None,
    max_update_norm_ratio: Annotated[float | None, typer.Option(
        help="Reject an update that moves the model more than this many times the "
        "round's median (0: no bound)." + _default(str(_DEFAULT.max_update_norm_ratio)))
    ] = None,
    trim_fraction: Annotated[float | None, typer.Option(
        help="trimmedavg: fraction of site values cut from each tail, per weight."
        + _default(str(_DEFAULT.trim_fraction)))] = None,
    malicious_sites: Annotated[int | None, typer.Option(
        help="krum, bulyan: hostile sites the aggregation must tolerate."
        + _default(str(_DEFAULT.malicious_sites)))] = None,
    krum_select: Annotated[int | None, typer.Option(
        help="krum: updates averaged (1: Krum, more: multi-Krum)."
        + _default(str(_DEFAULT.krum_select)))] = None,
    server_lr: Annotated[float | None, typer.Option(
        help="fedadam, fedyogi: server learning rate." + _default(str(_DEFAULT.server_lr)))
    ] = None,
    attack: Annotated[str | None, typer.Option(
        help="Simulate hostile hospitals: label-flip, sign-flip, scale:K, noise, nan or "
        "free-rider (the --malicious largest sites mount it).")] = None,
    malicious: Annotated[int, typer.Option(
        help="With --attack: how many hospitals attack.")] = 1,
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
    _setup_logging(verbose)
    from server.rounds import FederationError
    from simulations.runner import simulate as run

    try:
        cfg = RunConfig.preset(dp, model_kind=model, **_given(
            data=data, test_data=test_data, manifest=manifest, partition=partition,
            sites=sites, rounds=rounds, local_epochs=local_epochs, strategy=strategy,
            proximal_mu=proximal_mu, min_site_size=min_site_size, seed=seed, out=out,
            epsilon=epsilon, delta=delta, max_grad_norm=max_grad_norm, state_dir=state_dir,
            secagg=secagg, secagg_threshold=secagg_threshold,
            max_update_norm_ratio=max_update_norm_ratio, trim_fraction=trim_fraction,
            malicious_sites=malicious_sites, krum_select=krum_select, server_lr=server_lr))
        cfg = _with_genome_tokens(cfg, genome_tokens)
        run_dir = run(cfg, compare=compare, verbose=verbose, attack=attack,
                      malicious=malicious)
    except (ValueError, FileNotFoundError, FederationError) as exc:
        _fail(exc)
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
        + _default(str(_NO_DP.rounds * _NO_DP.local_epochs)))] = None,
    seed: SeedOpt = None,
    out: OutOpt = None,
    model: ModelOpt = None,
    genome_tokens: GenomeTokensOpt = None,
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
    _setup_logging(verbose)
    from common.simulated_federation import load_federation
    from simulations.central import train_central

    try:
        schedule = {} if epochs is None else {"rounds": epochs, "local_epochs": 1}
        cfg = RunConfig.preset("none", model_kind=model, **schedule, **_given(
            data=data, test_data=test_data, manifest=manifest, partition=partition,
            sites=sites, seed=seed))
        cfg = _with_genome_tokens(cfg, genome_tokens)
        fed = load_federation(cfg)
        result = train_central(fed, cfg, (out / "model") if out else None)
    except (ValueError, FileNotFoundError) as exc:
        _fail(exc)
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
    _setup_logging(verbose)
    from common.metrics import METRIC_KEYS
    from common.simulated_federation import load_federation
    from simulations.central import run_baselines_on_split

    try:
        cfg = RunConfig(**_given(data=data, test_data=test_data, manifest=manifest,
                                 partition=partition, sites=sites, seed=seed))
        results = run_baselines_on_split(load_federation(cfg), cfg.seed)
    except (ValueError, FileNotFoundError) as exc:
        _fail(exc)
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
    _setup_logging(verbose)
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
        _fail(exc)
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
    _setup_logging(verbose)
    from common.bundle import BundleError
    from simulations.membership_inference import membership_inference

    try:
        results = [membership_inference(run_dir, data) for run_dir in model]
    except (ValueError, FileNotFoundError, BundleError) as exc:
        _fail(exc)
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
