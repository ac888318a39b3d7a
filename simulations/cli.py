"""``cancer-alpha``: the project's command line.

Each package contributes its commands (``site ...`` from ``client``); this module
composes them. Torch and Flower are imported inside commands so ``--help`` stays fast.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from client.cli import app as site_app
from common.config import RunConfig
from server.cli import coordinator_app, pki_app
from server.serving.cli import audit_verify, auth_app, registry_app, serve

app = typer.Typer(
    name="cancer-alpha",
    help="Federated multi-omics cancer classification: simulate a consortium of hospitals, "
    "train centrally or with classical baselines on the same split, evaluate and audit a "
    "model, check a site's data, and serve the global model.",
    no_args_is_help=True,
    add_completion=False,
    # Never print local variables in tracebacks: they may hold patient data.
    pretty_exceptions_show_locals=False,
)
app.add_typer(site_app, name="site", help="Commands a hospital site runs on its own data.")
app.add_typer(coordinator_app, name="coordinator",
              help="Run the consortium coordinator (Flower SuperLink, TLS + node authentication).")
app.add_typer(pki_app, name="pki", help="Consortium CA, coordinator certificate and site keys.")
console = Console(stderr=True)
_DEFAULT = RunConfig()

DataOpt = Annotated[str, typer.Option(
    "--data", help="Dataset directory, or a bundled alias: brca, rosmap.")]
TestDataOpt = Annotated[str, typer.Option(
    "--test-data", help="Separate dataset directory used as the global test split.")]
ManifestOpt = Annotated[str, typer.Option(
    "--manifest", help="Manifest (dataset.toml) for --data, if not inside the directory.")]
PartitionOpt = Annotated[str, typer.Option(
    "--partition", help="site (tissue-source site), iid, or dirichlet:ALPHA.")]
SitesOpt = Annotated[int, typer.Option(
    "--sites", help="Hospitals: for site, keep the N-1 largest and merge the rest; "
    "for iid/dirichlet, the count. 0 = automatic.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for the split, init and training.")]
OutOpt = Annotated[Path | None, typer.Option("--out", help="Run directory to write.")]
RoundsOpt = Annotated[int, typer.Option("--rounds", help="Federated rounds.")]
EpochsOpt = Annotated[int, typer.Option("--local-epochs", help="Local epochs per round.")]


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
        force=True,
    )
    for noisy in ("flwr", "ray"):
        logging.getLogger(noisy).setLevel(logging.INFO if verbose else logging.ERROR)


def _fail(exc: Exception) -> None:
    console.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(2) from exc


@app.command()
def simulate(
    data: DataOpt = _DEFAULT.data,
    test_data: TestDataOpt = "",
    manifest: ManifestOpt = "",
    partition: PartitionOpt = _DEFAULT.partition,
    sites: SitesOpt = 0,
    rounds: Annotated[int | None, typer.Option(
        "--rounds", help="Federated rounds [default: 20 with --dp local, else 10].")] = None,
    local_epochs: Annotated[int | None, typer.Option(
        "--local-epochs", help="Local epochs per round [default: 1 with --dp local, else 4]."
    )] = None,
    strategy: Annotated[str, typer.Option(
        help="fedavg, fedavgm (server momentum) or fedprox.")] = _DEFAULT.strategy,
    proximal_mu: Annotated[float, typer.Option(help="FedProx proximal weight.")] = (
        _DEFAULT.proximal_mu),
    min_site_size: Annotated[int, typer.Option(
        help="site partition: smaller sites are merged into 'other'.")] = _DEFAULT.min_site_size,
    seed: SeedOpt = _DEFAULT.seed,
    out: OutOpt = None,
    dp: Annotated[str, typer.Option(
        help="Differential privacy: none; local (DP-SGD at every site); central (server "
        "clips site updates and noises their mean). Local DP trains the small model "
        "of common.config.LOCAL_DP_PRESET.")] = "local",
    epsilon: Annotated[float, typer.Option(
        help="Local DP: each site's privacy budget epsilon.")] = _DEFAULT.epsilon,
    delta: Annotated[float, typer.Option(
        help="Local DP: delta; 0 = 1/(10 n) for a site with n patients.")] = _DEFAULT.delta,
    max_grad_norm: Annotated[float, typer.Option(
        help="Local DP: per-sample gradient clipping bound.")] = _DEFAULT.max_grad_norm,
    state_dir: Annotated[str, typer.Option(
        help="Local DP: sites' privacy ledgers go to STATE_DIR/<site> "
        "(default runs/site-state).")] = "",
    secagg: Annotated[bool, typer.Option(
        "--secagg", help="Secure aggregation (Flower SecAgg+): the coordinator sees only "
        "the sum of the sites' updates. Needs 3 or more sites.")] = False,
    secagg_threshold: Annotated[float, typer.Option(
        help="SecAgg+: fraction of a site's neighbours needed to unmask it.")] = (
        _DEFAULT.secagg_threshold),
    compare: Annotated[bool, typer.Option(
        help="Also train the centralized model and the baselines on the same split.")] = True,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run a federation of virtual hospitals on one machine (Flower simulation engine).

    With no options: the bundled TCGA BRCA data, one hospital per tissue source site,
    FedAvg. Writes a run directory with config.json, metrics.json, the model bundle,
    per-round curves and a confusion matrix.
    """
    _setup_logging(verbose)
    from simulations.runner import simulate as run

    try:
        given = {k: v for k, v in {"rounds": rounds, "local_epochs": local_epochs}.items()
                 if v is not None}
        cfg = RunConfig.for_privacy(
            dp, data=data, test_data=test_data, manifest=manifest, partition=partition,
            sites=sites, strategy=strategy, proximal_mu=proximal_mu,
            min_site_size=min_site_size, seed=seed, out=str(out) if out else "",
            epsilon=epsilon, delta=delta, max_grad_norm=max_grad_norm, state_dir=state_dir,
            secagg=secagg, secagg_threshold=secagg_threshold, **given)
        from server.federation import FederationError

        run_dir = run(cfg, compare=compare, verbose=verbose)
    except (ValueError, FileNotFoundError, FederationError) as exc:
        _fail(exc)
    _print_summary(run_dir)


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
    spent = metrics.get("per_site_epsilon")
    if spent:
        budget = json.loads((run_dir / "config.json").read_text())["run_config"]["epsilon"]
        Console().print(f"local DP: {len(spent)} sites spent epsilon "
                        f"{min(spent.values()):.3f} to {max(spent.values()):.3f} "
                        f"(budget {budget:g} each unless a site set its own)")
    if metrics.get("stopped_early"):
        Console().print(f"[yellow]stopped early:[/] {metrics['stopped_early']}")


@app.command("train-central")
def train_central_cmd(
    data: DataOpt = _DEFAULT.data,
    test_data: TestDataOpt = "",
    manifest: ManifestOpt = "",
    partition: PartitionOpt = _DEFAULT.partition,
    sites: SitesOpt = 0,
    epochs: Annotated[int, typer.Option(help="Maximum epochs (early stopping on val).")] = (
        _DEFAULT.rounds * _DEFAULT.local_epochs),
    seed: SeedOpt = _DEFAULT.seed,
    out: OutOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Train the same model on pooled data, with the split a federation would use.

    Training and validation patients are the union of the hospitals' splits for the
    given --partition, so the result is comparable with `simulate`.
    """
    _setup_logging(verbose)
    from common.federation import load_federation
    from simulations.central import train_central

    try:
        cfg = RunConfig(data=data, test_data=test_data, manifest=manifest, partition=partition,
                        sites=sites, rounds=epochs, local_epochs=1, seed=seed)
        fed = load_federation(cfg)
        result = train_central(fed, cfg, (out / "model") if out else None)
    except (ValueError, FileNotFoundError) as exc:
        _fail(exc)
    if out:
        from common.bundle import write_json

        write_json(out / "metrics.json", result)
        write_json(out / "config.json", {"run_config": cfg.to_dict(),
                                          "federation": fed.record()})
    print(json.dumps({k: v for k, v in result.items() if k not in ("history", "test")},
                     indent=2))


@app.command()
def baselines(
    data: DataOpt = _DEFAULT.data,
    test_data: TestDataOpt = "",
    manifest: ManifestOpt = "",
    partition: PartitionOpt = _DEFAULT.partition,
    sites: SitesOpt = 0,
    seed: SeedOpt = _DEFAULT.seed,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Logistic regression, random forest, SVM and gradient boosting on the same split."""
    _setup_logging(verbose)
    from common.federation import load_federation
    from common.metrics import METRIC_KEYS
    from simulations.central import run_baselines_on_split

    try:
        cfg = RunConfig(data=data, test_data=test_data, manifest=manifest, partition=partition,
                        sites=sites, seed=seed)
        results = run_baselines_on_split(load_federation(cfg), seed)
    except (ValueError, FileNotFoundError) as exc:
        _fail(exc)
    print(json.dumps({name: {k: m[k] for k in METRIC_KEYS} for name, m in results.items()},
                     indent=2))


@app.command()
def evaluate(
    model: Annotated[Path, typer.Option("--model", help="Run directory or model bundle.")],
    data: DataOpt,
    split: Annotated[str, typer.Option(help="Split of --data to use (manifest splits).")] = "",
    manifest: ManifestOpt = "",
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Score a trained model on a labelled dataset; prints metrics as JSON.

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
    print(json.dumps(metrics, indent=2))


audit_app = typer.Typer(help="Audits: membership inference against a trained model; the "
                        "inference service's audit log.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
app.add_typer(registry_app, name="registry",
              help="The model registry: register, list, show and promote models.")
app.add_typer(auth_app, name="auth", help="Access tokens for the inference service.")
app.command("serve")(serve)
audit_app.command("verify")(audit_verify)


@audit_app.command("privacy")
def audit_privacy(
    model: Annotated[list[Path], typer.Option(
        "--model", help="Run directory to audit (repeat the option to compare runs).")],
    data: Annotated[str, typer.Option(
        "--data", help="Dataset directory, if it moved since the run.")] = "",
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="Also write the results to this JSON file.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Membership-inference attack: training patients (members) versus test patients.

    Prints attack AUC (0.5 = chance) and the true-positive rate at 1 % false-positive
    rate for a loss attack and a per-class calibrated likelihood-ratio attack.
    """
    _setup_logging(verbose)
    from common.bundle import BundleError
    from simulations.audit import membership_inference

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


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()



