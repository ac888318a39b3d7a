"""Benchmark: the privacy-utility trade-off of a federation, several seeds, one run.

For each seed, on one split (site partition):

* no DP with the non-private model (``RunConfig.preset("none")``) and with the DP-SGD
  model and schedule without noise: the two references;
* local DP (every site's release carries its whole noise: the class-centroid model from
  noised sums) for each ``--epsilon``, and local DP-SGD (Opacus at every site, the small
  transformer) at the largest;
* central DP (server clips site updates and noises their mean) at the same epsilons;
* SecAgg+ combined with local DP-SGD at the largest epsilon;
* distributed DP (noise shares on sums over each site's patients, summed by SecAgg+) at
  each epsilon with its default model, the class-centroid classifier, and that model
  without noise (epsilon 1e6); and the transformer trained by noised gradient steps at
  the largest epsilon.

Every DP run starts from an empty privacy ledger, and its sites accept noise
multipliers up to 100 (the product's default refuses rounds above 10 as signal-free),
so that every epsilon trains the same schedule and its utility is measured. Then, on
one site-sized full batch, the time of one DP-SGD step (Opacus ghost clipping, and
per-sample hooks) against one ordinary step of the same model, for the DP model and
the default model; and a membership-inference audit
(:mod:`simulations.membership_inference`) of the first seed's models.

    python -m simulations.benchmarks.privacy_utility --data brca --seeds 0 1 2

``--only distributed`` runs the rows whose name contains that text (the comparisons that
need a missing row are left out).

Prints the tables and writes ``privacy_utility.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from common.config import RunConfig
from common.metrics import METRIC_KEYS, format_mean_std

# The small transformer with the DP-SGD schedule (local DP's model other than centroids).
DP_SGD = {"model_kind": "mmt"}


def configurations(epsilons: list[float]) -> dict[str, dict]:
    """Row name -> ``RunConfig.preset`` arguments."""
    rows: dict[str, dict] = {
        "no DP, default model": {"dp": "none"},
        "no DP, DP model and schedule": {"dp": "none", "preset": "local", **DP_SGD},
    }
    top = max(epsilons)
    for eps in epsilons:
        rows[f"local DP, eps {eps:g}"] = {"dp": "local", "epsilon": eps}
    rows[f"local DP-SGD, eps {top:g}"] = {"dp": "local", "epsilon": top, **DP_SGD}
    for eps in epsilons:
        rows[f"central DP, eps {eps:g}"] = {"dp": "central", "epsilon": eps, "preset": "local",
                                            **DP_SGD}
    rows[f"SecAgg+ and local DP-SGD, eps {top:g}"] = {"dp": "local", "epsilon": top,
                                                      "secagg": True, **DP_SGD}
    for eps in epsilons:
        rows[f"distributed DP, eps {eps:g}"] = {"dp": "distributed", "epsilon": eps}
    rows["distributed DP, no noise (eps 1e6)"] = {"dp": "distributed", "epsilon": 1e6}
    rows[f"distributed DP, transformer, eps {top:g}"] = {"dp": "distributed", "epsilon": top,
                                                        "model_kind": "mmt"}
    return rows


def build_config(data: str, seed: int, out: Path, spec: dict, state_dir: str) -> RunConfig:
    """``spec``'s run: ``preset`` picks the model and schedule, ``dp`` the privacy mode."""
    spec = dict(spec)
    dp = spec.pop("dp")
    preset = spec.pop("preset", dp)
    cfg = RunConfig.preset(preset, data=data, seed=seed, out=str(out), **spec)
    return replace(cfg, dp=dp, state_dir=state_dir, max_noise_multiplier=100.0)


def run_seed(data: str, seed: int, out: Path, rows: dict[str, dict]) -> dict:
    from simulations.runner import simulate

    results = {}
    for name, spec in rows.items():
        slug = name.replace(" ", "_").replace(",", "").replace("+", "")
        with tempfile.TemporaryDirectory(prefix="ledgers-") as state:
            cfg = build_config(data, seed, out / slug, spec, state)
            started = time.perf_counter()
            run_dir = simulate(cfg, compare=False, show_progress=False)
            wall = time.perf_counter() - started
        m = json.loads((run_dir / "metrics.json").read_text())
        eps = m.get("per_site_epsilon") or {}
        results[name] = {
            **{k: float(m[k]) for k in METRIC_KEYS},
            "seconds_per_round": m["rounds_seconds"] / max(1, m["rounds_run"]),
            "rounds_run": m["rounds_run"],
            "wall_seconds": wall,
            "max_site_epsilon": max(eps.values()) if eps else None,
            "central_epsilon": (m.get("central_dp") or {}).get("epsilon_spent"),
            "recall": {name: c["recall"] for name, c in m["test"]["per_class"].items()},
            "run_dir": str(run_dir),
        }
        logging.getLogger(__name__).warning("seed %d, %s: macro-F1 %.3f", seed, name,
                                            results[name]["f1_macro"])
    return results


def step_times(data: str, repeats: int = 40) -> list[dict]:
    """Median time of one training step, DP versus not, on a site-sized full batch."""
    import torch
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    from common.losses import WeightedCrossEntropy
    from common.model import ModelSpec, build_model, count_parameters
    from common.preprocessing import Standardizer
    from common.simulated_federation import load_federation
    from common.training import tensors

    fed = load_federation(RunConfig(data=data))
    sizes = [len(s.train) for s in fed.plan.sites]
    site = int(np.argsort(sizes)[len(sizes) // 2])  # the median hospital
    _, train, _ = fed.site_data(site)
    x, mask, y = tensors(Standardizer.fit(train).transform(train))
    weights = torch.ones(train.schema.n_classes)
    out = []
    for label, model_cfg in (("DP model", RunConfig.preset("local", **DP_SGD).model),
                             ("default model", RunConfig.preset("none").model)):
        def timed(mode: str, model_cfg: Any = model_cfg) -> float:
            torch.manual_seed(0)
            model = build_model(ModelSpec.for_schema(model_cfg, train.schema))
            model.train()
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
            criterion = WeightedCrossEntropy(weights)
            if mode != "none":
                loader = DataLoader(TensorDataset(x, mask, y), batch_size=len(y))
                made = PrivacyEngine().make_private(
                    module=model, optimizer=optimizer, data_loader=loader,
                    noise_multiplier=1.0, max_grad_norm=1.0, poisson_sampling=False,
                    criterion=criterion, grad_sample_mode=mode)
                model, optimizer = made[0], made[1]
                if len(made) == 4:  # ghost clipping returns its wrapped criterion
                    criterion = made[2]
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                optimizer.zero_grad(set_to_none=True)
                criterion(model(x, mask), y).backward()
                optimizer.step()
                times.append(time.perf_counter() - t0)
            return float(np.median(times[5:]) * 1000)

        n_params = count_parameters(build_model(ModelSpec.for_schema(model_cfg, train.schema)))
        plain = timed("none")
        row = {"model": label, "parameters": n_params, "batch": len(y),
               "plain_ms": plain}
        for mode in ("ghost", "hooks"):
            row[f"{mode}_ms"] = timed(mode)
            row[f"{mode}_ratio"] = row[f"{mode}_ms"] / plain
        out.append(row)
    return out


def summarize(per_seed: list[dict]) -> list[dict]:
    table = []
    for name in per_seed[0]:
        rows = [r[name] for r in per_seed]
        entry = {"method": name}
        for k in ("accuracy", "f1_macro", "f1_weighted", "roc_auc_ovr", "seconds_per_round"):
            entry[k] = format_mean_std([r[k] for r in rows])
        eps = [r["max_site_epsilon"] or r["central_epsilon"] for r in rows]
        entry["epsilon spent"] = "inf" if eps[0] is None else f"{max(eps):.2f}"
        entry["_f1"] = float(np.mean([r["f1_macro"] for r in rows]))
        entry["_sec"] = float(np.mean([r["seconds_per_round"] for r in rows]))
        table.append(entry)
    return table


def print_markdown(rows: list[dict], columns: list[str], title: str) -> None:
    print(f"\n### {title}\n")
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in columns) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="brca")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 3.0, 8.0])
    parser.add_argument("--out", type=Path, default=Path("runs") / "bench-privacy")
    parser.add_argument("--only", default="", help="run only the rows whose name contains this")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from simulations.membership_inference import membership_inference

    rows = {name: spec for name, spec in configurations(args.epsilons).items()
            if args.only in name}
    per_seed = [run_seed(args.data, s, args.out / f"seed-{s}", rows) for s in args.seeds]
    table = summarize(per_seed)
    print_markdown(table, ["method", "epsilon spent", "accuracy", "f1_macro", "f1_weighted",
                           "roc_auc_ovr", "seconds_per_round"],
                   f"Privacy-utility on {args.data} (test split, mean ± std over seeds "
                   f"{args.seeds})")
    by_name = {r["method"]: r for r in table}
    top = max(args.epsilons)
    ref = by_name.get("no DP, default model")
    local = by_name.get(f"local DP-SGD, eps {top:g}")
    same = by_name.get("no DP, DP model and schedule")
    if ref and local and same:
        print(f"\nlocal DP-SGD eps {top:g} vs no DP (default model): macro-F1 "
              f"{local['_f1'] - ref['_f1']:+.3f}; vs no DP with the same model and schedule: "
              f"{local['_f1'] - same['_f1']:+.3f} (target: within -0.03)")
        print(f"wall time per round, local DP-SGD / no DP with the same model and schedule: "
              f"{local['_sec'] / same['_sec']:.2f}x")
    classes = list(per_seed[0][next(iter(rows))]["recall"])
    def mean_recall(name: str, c: str) -> str:
        return f"{np.mean([seed[name]['recall'][c] for seed in per_seed]):.2f}"

    print_markdown([{"method": name, **{c: mean_recall(name, c) for c in classes}}
                    for name in rows],
                   ["method", *classes], "Test recall per class (mean over seeds)")
    steps = step_times(args.data) if not args.only else []
    if steps:
        print_markdown(
            [{**r, **{k: f"{v:.2f}" for k, v in r.items() if k.endswith(("ms", "ratio"))}}
             for r in steps],
            ["model", "parameters", "batch", "plain_ms", "ghost_ms", "ghost_ratio",
             "hooks_ms", "hooks_ratio"],
            "One training step, DP-SGD vs plain (median ms; target ratio <= 1.5)")
    audited = ["no DP, default model", "no DP, DP model and schedule",
               *[f"local DP, eps {e:g}" for e in args.epsilons],
               *[f"distributed DP, eps {e:g}" for e in args.epsilons],
               f"distributed DP, transformer, eps {top:g}"]
    audits = []
    for name in (n for n in audited if n in rows):
        # Every seed's model: one AUC on a few hundred patients has a standard error of
        # about .02, as large as the margins the audit is read against.
        runs = [membership_inference(Path(seed[name]["run_dir"])) for seed in per_seed]

        def over_seeds(attack: str, key: str, runs: list[dict] = runs) -> str:
            return format_mean_std([r[attack][key] for r in runs])

        audits.append({"method": name, "members": runs[0]["members"],
                       "non-members": runs[0]["nonmembers"],
                       "loss AUC": over_seeds("loss_attack", "auc"),
                       "loss TPR@1%FPR": over_seeds("loss_attack", "tpr_at_1pct_fpr"),
                       "LR AUC": over_seeds("likelihood_ratio_attack", "auc"),
                       "LR TPR@1%FPR": over_seeds("likelihood_ratio_attack",
                                                  "tpr_at_1pct_fpr")})
    if audits:
        print_markdown(audits, list(audits[0]),
                       f"Membership inference, mean ± std over seeds {args.seeds} (members "
                       f"and non-members of seed {args.seeds[0]}; target: AUC <= 0.55 at "
                       "eps 8)")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "privacy_utility.json").write_text(json.dumps(
        {"per_seed": per_seed, "table": table, "step_times": steps, "audit": audits},
        indent=2))


if __name__ == "__main__":
    main()
