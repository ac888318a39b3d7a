"""Benchmark: distributed DP's utility, emulated in one process (fast, several seeds).

The product's distributed-DP round adds, at each of ``m`` sites, a noise share of
standard deviation ``sigma * C / sqrt(m)`` to the site's clipped per-patient gradient
sum; SecAgg+ yields the sum, whose noise is ``N(0, sigma^2 C^2)``. This benchmark computes
the same sum in one process: every site's ``clipped_gradient_sum`` (the product's
function), plus the consortium's total noise drawn once, with the product's noise plan
(:class:`common.distributed_dp.NoisePlan`), per-patient standardization, noised class
prior, logit-adjusted loss, cosine learning rate and server momentum. It leaves out the
Flower messaging, which does not change the numbers, and reports the last round's model
on the held-out test split, as the product does.

    python -m simulations.benchmarks.distributed_dp_emulation --epsilons 1 3 8 inf \
        --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace

import numpy as np


def run(seed: int, epsilon: float, *, rounds: int, lr: float, momentum: float,
        d_model: int, clip: float = 1.0) -> dict:
    """Test macro-F1 and per-class recall of one emulated distributed-DP run."""
    import torch

    from client.distributed_dp import clipped_gradient_sum
    from common.config import ModelConfig, RunConfig
    from common.distributed_dp import NoisePlan
    from common.metrics import confusion_matrix, macro_f1
    from common.model import ModelSpec, build_model
    from common.optimization import lr_at
    from common.preprocessing import Standardizer
    from common.simulated_federation import load_federation
    from common.training import tensors

    torch.set_num_threads(1)
    cfg = RunConfig(seed=seed)
    fed = load_federation(cfg)
    schema = fed.pool.schema
    prep = Standardizer.for_each_patient(schema)
    sites = [tensors(prep.transform(fed.site_data(i)[1].align_to(schema)))
             for i in range(len(fed.plan.sites))]
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    plan = (NoisePlan.calibrate(epsilon, 1e-5, rounds, clip, len(sites))
            if math.isfinite(epsilon) else None)
    n_classes = schema.n_classes
    counts = sum(np.bincount(y.numpy(), minlength=n_classes) for _, _, y in sites)
    counts = counts + (rng.normal(0, plan.count_noise, n_classes) if plan else 0.0)
    counts = np.maximum(counts, 1.0)
    log_prior = torch.tensor(np.log(counts / counts.sum()), dtype=torch.float32)
    model = build_model(ModelSpec.for_schema(
        replace(ModelConfig.for_distributed_dp(), d_model=d_model), schema))
    train_cfg = replace(cfg.train, lr=lr)
    velocity = {k: torch.zeros_like(p) for k, p in model.named_parameters()}
    for t in range(rounds):
        total: dict = {}
        for x, mask, y in sites:
            sums, _ = clipped_gradient_sum(model, x, mask, y, log_prior, clip)
            total = {k: total.get(k, 0) + v for k, v in sums.items()}
        step = lr_at(t / rounds, train_cfg)
        with torch.no_grad():
            for k, p in model.named_parameters():
                noise = (torch.from_numpy(rng.normal(0, plan.gradient_noise * clip,
                                                     tuple(p.shape))).float()
                         if plan else 0.0)
                velocity[k] = momentum * velocity[k] + step * (total[k] + noise) / counts.sum()
                p -= velocity[k]
    model.eval()
    x, mask, y = tensors(prep.transform(fed.test.align_to(schema)))
    with torch.no_grad():
        pred = model(x, mask).argmax(1).numpy()
    cm = confusion_matrix(y.numpy(), pred, n_classes)
    recall = np.diag(cm) / np.maximum(cm.sum(axis=1), 1)
    return {"epsilon": epsilon, "seed": seed, "f1_macro": macro_f1(cm),
            "recall": dict(zip(schema.label_names, recall.round(3).tolist(), strict=True))}


def main() -> None:
    from common.config import DISTRIBUTED_D_MODEL, DISTRIBUTED_LR, DISTRIBUTED_ROUNDS, RunConfig

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 3.0, 8.0, math.inf])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=DISTRIBUTED_ROUNDS)
    parser.add_argument("--lr", type=float, default=DISTRIBUTED_LR)
    parser.add_argument("--d-model", type=int, default=DISTRIBUTED_D_MODEL)
    args = parser.parse_args()
    momentum = RunConfig().server_momentum
    for eps in args.epsilons:
        runs = [run(seed, eps, rounds=args.rounds, lr=args.lr, momentum=momentum,
                    d_model=args.d_model) for seed in args.seeds]
        for r in runs:
            print(json.dumps(r), flush=True)
        f1 = [r["f1_macro"] for r in runs]
        recall = {c: np.mean([r["recall"][c] for r in runs]) for c in runs[0]["recall"]}
        print(f"epsilon {eps:g}: macro-F1 {np.mean(f1):.3f} ± {np.std(f1):.3f}; recall "
              + ", ".join(f"{c} {v:.2f}" for c, v in recall.items()), flush=True)


if __name__ == "__main__":
    main()
