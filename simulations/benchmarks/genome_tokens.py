"""Benchmark: genomic-coordinate tokens against the learned soft groups, several seeds.

Trains the multi-modal transformer centrally on each seed's pooled training split (the
federation's hospitals' training rows) with the default tokenization and with
``genome_tokens`` groups per modality; reports the best validation macro-F1 (what the
choice is made on) and the test macro-F1 of the model selected on validation.

    OMP_NUM_THREADS=1 python -m simulations.benchmarks.genome_tokens --data brca \\
        --seeds 0 1 2 --groups 0 8 16
    OMP_NUM_THREADS=1 python -m simulations.benchmarks.genome_tokens --data rosmap \
        --partition iid --seeds 0 1 2 --groups 0 8
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import numpy as np


def run(data: str, seed: int, groups: int, partition: str = "site") -> dict:
    from common.config import RunConfig
    from common.simulated_federation import load_federation
    from simulations.central import train_central

    base = RunConfig.preset("none", data=data, seed=seed, partition=partition)
    cfg = replace(base, model=replace(base.model, genome_tokens=groups))
    result = train_central(load_federation(cfg), cfg)
    best = next(r for r in result["history"] if r.get("best"))
    return {"data": data, "seed": seed, "genome_tokens": groups,
            "val_f1_macro": best["val"]["f1_macro"], "test_f1_macro": result["f1_macro"],
            "best_epoch": result["best_epoch"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="brca")
    parser.add_argument("--partition", default="site",
                        help="site, iid or dirichlet:ALPHA (the split's hospitals)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--groups", type=int, nargs="+", default=[0, 8, 16],
                        help="genome_tokens per modality; 0: the learned soft groups")
    args = parser.parse_args()
    for groups in args.groups:
        rows = [run(args.data, seed, groups, args.partition) for seed in args.seeds]
        for row in rows:
            print(json.dumps(row), flush=True)
        val = [r["val_f1_macro"] for r in rows]
        test = [r["test_f1_macro"] for r in rows]
        label = "soft groups" if groups == 0 else f"genome tokens ({groups} groups)"
        print(f"{args.data} {label}: validation macro-F1 {np.mean(val):.3f} ± {np.std(val):.3f};"
              f" test {np.mean(test):.3f} ± {np.std(test):.3f}", flush=True)


if __name__ == "__main__":
    main()
