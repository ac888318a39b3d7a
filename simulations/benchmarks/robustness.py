"""Benchmark: test macro-F1 of each strategy under each attack, 1 and 3 malicious sites.

For every strategy, on one split (BRCA, one hospital per tissue source site), a clean
federation and one federation per attack and number of malicious sites (the largest
hospitals attack, or ``--attackers random``; see :mod:`simulations.attacks`), all with
the norm bound of the update vetting (5x the round's median). The row ``default`` is
the vetting of a ``--dp none`` run as the product ships it (FedAvg with the direction
check and quarantine); the other rows leave those two off, to show what each aggregator
does on its own. To keep ~100 federations affordable on two cores it runs without DP,
with a reduced configuration stated in the table: a small model, few rounds, and the
sites called in-process one after another (:class:`simulations.local_grid.InProcessGrid`)
instead of through Ray.

    python -m simulations.benchmarks.robustness --data brca --out runs/robustness

Prints a Markdown table (test macro-F1 at the round chosen on pooled validation) and
writes ``robustness.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from common.atomic import write_json_atomic
from common.config import ModelConfig, RunConfig
from simulations.attacks import ATTACKERS

# "default": the preset vetting of a run without DP; every other name is a strategy.
ROBUST_DEFAULT = "default"
STRATEGIES = ("fedavg", ROBUST_DEFAULT, "trimmedavg", "fedmedian", "bulyan", "krum")
ATTACKS = ("label-flip", "sign-flip", "scale:100", "noise", "nan", "free-rider")


def base_config(data: str, rounds: int, local_epochs: int, d_model: int, seed: int
                ) -> RunConfig:
    """The reduced no-DP configuration every row shares (the preset's vetting)."""
    return RunConfig.preset(
        "none", data=data, rounds=rounds, local_epochs=local_epochs, seed=seed,
        round_patience=rounds,
        model=ModelConfig(d_model=d_model, n_heads=max(1, d_model // 16)))


def strategy_config(base: RunConfig, strategy: str, n_sites: int, tolerate: int) -> RunConfig:
    """``strategy`` set up to tolerate ``tolerate`` hostile sites out of ``n_sites``.

    ``default`` keeps ``base`` as it is. The others run without the direction check and
    quarantine: trimmed mean cuts ``tolerate`` sites from each tail; multi-Krum
    averages the ``n - f`` best scored; Bulyan's ``f`` is capped by its ``n >= 4f + 3``.
    """
    if strategy == ROBUST_DEFAULT:
        return base
    settings: dict[str, Any] = {"strategy": strategy, "update_direction_ratio": 0.0,
                                "quarantine_after": 0}
    if strategy == "trimmedavg":
        settings["trim_fraction"] = min(0.49, (tolerate + 0.5) / n_sites)
    elif strategy == "krum":
        settings.update(malicious_sites=tolerate, krum_select=n_sites - tolerate)
    elif strategy == "bulyan":
        settings["malicious_sites"] = min(tolerate, (n_sites - 3) // 4)
    return replace(base, **settings)


def run_federation_in_process(cfg: RunConfig, run_dir: Path, attack: str | None,
                              malicious: int, attackers: str = "largest") -> dict[str, Any]:
    """One federation (the product's ServerApp loop and ClientApp) on an in-process grid."""
    from client.app import build_client_app
    from common.simulated_federation import load_federation
    from server.app import run_server
    from simulations.local_grid import InProcessGrid
    from simulations.runner import attack_mods, attack_plan

    fed = load_federation(cfg)
    cfg = replace(cfg, out=str(run_dir))
    plan = attack_plan(cfg, fed, attack, malicious, attackers) if attack else None
    overrides = cfg.to_flower()
    grid = InProcessGrid(build_client_app(overrides, train_mods=attack_mods(plan)),
                         len(fed.plan.sites), overrides)
    started = time.perf_counter()
    payload = run_server(grid, cfg, run_dir.name)  # type: ignore[arg-type]
    return {"f1_macro": payload["f1_macro"], "accuracy": payload["accuracy"],
            "best_round": payload["best_round"], "seconds": time.perf_counter() - started,
            "rejections": payload.get("rejections"),
            "malicious_sites": list(plan.sites) if plan else []}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="brca")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES),
                        help=f"strategy names, or {ROBUST_DEFAULT!r}: the vetting of a "
                        "--dp none run (direction check and quarantine)")
    parser.add_argument("--clean-only", nargs="*", default=["fedadam", "fedyogi"],
                        help="strategies run without attacks only (e.g. server optimizers)")
    parser.add_argument("--attacks", nargs="+", default=list(ATTACKS))
    parser.add_argument("--malicious", nargs="+", type=int, default=[1, 3])
    parser.add_argument("--attackers", choices=ATTACKERS, default="largest",
                        help="which sites attack: the largest, or drawn from --seed")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/robustness"))
    parser.add_argument("--workers", type=int, default=2, help="federations run at once")
    args = parser.parse_args(argv)
    _quiet()
    from common.simulated_federation import load_federation

    base = base_config(args.data, args.rounds, args.local_epochs, args.d_model, args.seed)
    n_sites = len(load_federation(base).plan.sites)
    tolerate = max(args.malicious)
    jobs = [(strategy, strategy_config(base, strategy, n_sites, tolerate), attack, malicious,
             args.attackers, args.out)
            for strategy in args.strategies
            for attack, malicious in [(None, 0), *((a, m) for a in args.attacks
                                                   for m in args.malicious)]]
    jobs += [(strategy, strategy_config(base, strategy, n_sites, tolerate), None, 0,
              args.attackers, args.out) for strategy in args.clean_only]
    started = time.perf_counter()
    # One thread per worker process: the federations run side by side, not their torch ops.
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn"),
                             initializer=_quiet) as pool:
        results = []
        for row in pool.map(_row, jobs):
            results.append(row)
            print(json.dumps(row), flush=True)
    summary = {"config": {"data": args.data, "rounds": args.rounds,
                          "local_epochs": args.local_epochs, "d_model": args.d_model,
                          "seed": args.seed, "sites": n_sites, "tolerate": tolerate,
                          "attackers": args.attackers,
                          "max_update_norm_ratio": base.max_update_norm_ratio,
                          "default": {"strategy": base.strategy,
                                      "update_direction_ratio": base.update_direction_ratio,
                                      "quarantine_after": base.quarantine_after}},
               "seconds": time.perf_counter() - started, "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "robustness.json", summary)
    print(markdown_table(summary))


def _row(job: tuple[str, RunConfig, str | None, int, str, Path]) -> dict[str, Any]:
    label, cfg, attack, malicious, attackers, out = job
    name = f"{label}-{attack or 'clean'}-{malicious}".replace(":", "")
    row: dict[str, Any] = {"strategy": label, "attack": attack or "clean",
                           "malicious": malicious}
    try:
        row.update(run_federation_in_process(cfg, out / name, attack, malicious, attackers))
    except Exception as exc:  # a strategy that cannot aggregate is a result too
        row["error"] = f"{type(exc).__name__}: {exc}"
    return row


def _quiet() -> None:
    """Errors only, one torch thread (each worker is one federation on one core)."""
    import torch

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.ERROR, force=True)
    flower = logging.getLogger("flwr")
    flower.propagate = False
    flower.setLevel(logging.ERROR)


def markdown_table(summary: dict[str, Any]) -> str:
    """Strategies as rows; clean, then attack x malicious count as columns."""
    results = summary["results"]
    attacked = {(r["attack"], r["malicious"]) for r in results if r["attack"] != "clean"}
    columns = [("clean", 0), *sorted(attacked, key=lambda c: (
        ATTACKS.index(c[0]) if c[0] in ATTACKS else len(ATTACKS), c[1]))]
    cell = {(r["strategy"], r["attack"], r["malicious"]): r for r in results}
    head = ["strategy"] + ["clean" if a == "clean" else f"{a} x{m}" for a, m in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for strategy in dict.fromkeys(r["strategy"] for r in results):
        row = [strategy]
        for attack, malicious in columns:
            r = cell.get((strategy, attack, malicious))
            row.append("-" if r is None else "fail" if "error" in r
                       else f".{round(r['f1_macro'] * 1000):03d}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
