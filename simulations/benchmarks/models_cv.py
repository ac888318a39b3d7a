"""Model kinds x {centralized, federated} under k-fold cross-validation, beside the
classical baselines fitted on the same folds; prints one table and writes JSON.

    OMP_NUM_THREADS=1 .venv/bin/python -m simulations.benchmarks.models_cv \\
        --datasets brca --models mmt --partitions site --folds 5 --out runs/models-cv

A partition is ``site`` (natural hospitals; folds drawn within each site) or e.g.
``dirichlet:0.3@40`` (40 label-skewed hospitals; folds on the pooled data). Runs
without DP; epochs and rounds are chosen on validation patients carved from each
training fold.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from common.bundle import write_json
from common.config import ModelConfig, RunConfig
from simulations.cv import CvSettings, run_cv, with_model_kind

SHOWN = (("accuracy", "acc"), ("f1_macro", "F1 macro"), ("f1_weighted", "F1 weighted"),
         ("roc_auc_ovr", "AUC"))


def parse_partition(text: str) -> tuple[str, int]:
    """``"dirichlet:0.3@40"`` -> ``("dirichlet:0.3", 40)``; no ``@``: automatic sites."""
    name, _, sites = text.partition("@")
    return name, int(sites) if sites else 0


def parse_model_options(pairs: list[str]) -> dict[str, object]:
    """``["linear_path=true", "genome_tokens=8"]`` -> ModelConfig fields, typed as their
    defaults; an unknown field is an error naming the valid ones."""
    defaults = ModelConfig().to_dict()
    options: dict[str, object] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or name not in defaults:
            raise SystemExit(f"--model-option {pair!r}: want NAME=VALUE with NAME one of "
                             f"{', '.join(defaults)}")
        kind = type(defaults[name])
        options[name] = text.lower() in ("1", "true", "yes") if kind is bool else kind(text)
    return options


def run(datasets: list[str], models: list[str], partitions: list[str], folds: int,
        seed: int, out: Path, rounds: int | None,
        model_options: dict[str, object] | None = None) -> list[dict]:
    """One cv run per (dataset, partition, model); baselines once per (dataset, partition).
    ``model_options`` set ModelConfig fields of every model (a variant, e.g. the linear
    path or genomic-coordinate tokens)."""
    rows = []
    for data in datasets:
        for part in partitions:
            partition, sites = parse_partition(part)
            for i, kind in enumerate(models):
                schedule = {"rounds": rounds} if rounds else {}
                cfg = with_model_kind(RunConfig.preset("none", data=data, partition=partition,
                                                       sites=sites, seed=seed, **schedule),
                                      kind)
                cfg = replace(cfg, model=replace(cfg.model, **(model_options or {})))
                run_dir = out / f"{data}_{part.replace(':', '').replace('@', '-')}_{kind}"
                settings = CvSettings(folds=folds, mode="both", baselines=i == 0)
                summary = run_cv(replace(cfg), settings, run_dir, show_progress=False)
                for model, metrics in summary["summary"].items():
                    label = model if model in ("central", "federated") else "baseline"
                    rows.append({"data": data, "partition": part,
                                 "model": kind if label != "baseline" else model,
                                 "mode": label, "metrics": metrics, "run_dir": str(run_dir)})
                write_json(out / "models_cv.json", rows)
    return rows


def collect(out: Path) -> list[dict]:
    """Rows from the fold records already written under ``out`` (finished or not)."""
    import json

    from simulations.cv import FOLD_FILE, summarize

    rows = []
    for run_dir in sorted(p for p in out.iterdir() if p.is_dir()):
        records = [json.loads(f.read_text()) for f in sorted(run_dir.glob(f"fold-*/{FOLD_FILE}"))]
        if not records:
            continue
        data, part, kind = run_dir.name.split("_" if "_" in run_dir.name else "-", 2)
        for model, metrics in summarize(records).items():
            mode = model if model in ("central", "federated") else "baseline"
            rows.append({"data": data, "partition": f"{part} ({len(records)} folds)",
                         "model": kind if mode != "baseline" else model, "mode": mode,
                         "metrics": metrics, "run_dir": str(run_dir)})
    return rows


def table(rows: list[dict], folds: int) -> Table:
    t = Table(title=f"{folds}-fold cross-validation, mean +- std (no DP)")
    for col in ("data", "partition", "model", "mode", *(label for _, label in SHOWN)):
        t.add_column(col)
    for r in rows:
        t.add_row(r["data"], r["partition"], r["model"], r["mode"],
                  *(f"{r['metrics'][k]['mean']:.3f} +- {r['metrics'][k]['std']:.3f}"
                    for k, _ in SHOWN))
    return t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["brca"])
    parser.add_argument("--models", nargs="+", default=["mmt"])
    parser.add_argument("--partitions", nargs="+", default=["site"])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model-option", action="append", default=[], metavar="NAME=VALUE",
                        help="Set a ModelConfig field of every model (repeatable).")
    parser.add_argument("--out", type=Path, default=Path("runs/models-cv"))
    parser.add_argument("--table-only", action="store_true",
                        help="Print the table of the fold records already under --out.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.table_only:
        Console().print(table(collect(args.out), args.folds))
        return
    rows = run(args.datasets, args.models, args.partitions, args.folds, args.seed, args.out,
               args.rounds, parse_model_options(args.model_option))
    Console().print(table(rows, args.folds))


if __name__ == "__main__":
    main()
