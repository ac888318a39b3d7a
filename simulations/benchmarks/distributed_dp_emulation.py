"""Benchmark: distributed DP's utility, emulated in one process (fast, several seeds).

The product's distributed-DP round adds, at each of ``m`` sites, a noise share of
standard deviation ``sigma * C / sqrt(m)`` to the site's clipped per-patient gradient
sum; SecAgg+ yields the sum, whose noise is ``N(0, sigma^2 C^2)``. This benchmark computes
the same sum in one process: every site's ``clipped_gradient_sum`` (the product's
function), plus the consortium's total noise drawn once, with the product's noise plan
(:class:`common.distributed_dp.NoisePlan`), per-patient standardization, noised class
prior, logit-adjusted loss, cosine learning rate and server momentum. It leaves out the
Flower messaging, which does not change the numbers, and reports the last round's model
on the pooled validation split (what a run may choose by) and on the held-out test split.

``--model centroid`` emulates the class-centroid model's two releases instead
(:mod:`common.centroid`: the centre, then the class sums of clipped deviations, both in a
random projection when the product's rule chooses one) with the product's
``centroid_sums``, ``projection_for``, ``centre_from_sum`` and ``centroid_weights``.

    python -m simulations.benchmarks.distributed_dp_emulation --epsilons 1 3 8 inf \
        --seeds 0 1 2 --model mmt centroid
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace

import numpy as np


class _Federation:
    """The seed's sites (standardized per patient), pooled validation and test tensors."""

    def __init__(self, seed: int) -> None:
        import torch

        from common.config import RunConfig
        from common.preprocessing import Standardizer
        from common.simulated_federation import load_federation
        from common.training import tensors

        torch.set_num_threads(1)
        fed = load_federation(RunConfig(seed=seed))
        self.schema = schema = fed.pool.schema
        prep = Standardizer.for_each_patient(schema)
        parts = [fed.site_data(i) for i in range(len(fed.plan.sites))]
        self.sites = [tensors(prep.transform(train.align_to(schema))) for _, train, _ in parts]
        vals = [tensors(prep.transform(val.align_to(schema))) for _, _, val in parts]
        self.val = tuple(torch.cat([v[k] for v in vals]) for k in range(3))
        self.test = tensors(prep.transform(fed.test.align_to(schema)))
        self.rng = np.random.default_rng(seed)
        torch.manual_seed(seed)

    def noised_counts(self, plan) -> np.ndarray:
        n_classes = self.schema.n_classes
        counts = sum(np.bincount(y.numpy(), minlength=n_classes) for _, _, y in self.sites)
        counts = counts + (self.rng.normal(0, plan.count_noise, n_classes) if plan else 0.0)
        return np.maximum(counts, 1.0)

    def noise(self, plan, server_round: int, sensitivity: float, shape) -> np.ndarray:
        if plan is None:
            return np.zeros(shape)
        return self.rng.normal(0, plan.round_noise(server_round) * sensitivity, shape)

    def scores(self, model) -> dict:
        """Validation and test macro-F1, and test recall per class."""
        import torch

        from common.metrics import confusion_matrix, macro_f1

        model.eval()
        out = {}
        for split, (x, mask, y) in (("val", self.val), ("test", self.test)):
            with torch.no_grad():
                pred = model(x, mask).argmax(1).numpy()
            cm = confusion_matrix(y.numpy(), pred, self.schema.n_classes)
            out[f"{split}_f1_macro"] = macro_f1(cm)
        recall = np.diag(cm) / np.maximum(cm.sum(axis=1), 1)
        out["recall"] = dict(zip(self.schema.label_names, recall.round(3).tolist(), strict=True))
        return out


def run_centroid(seed: int, epsilon: float, *, radius: float) -> dict:
    """Scores of one emulated distributed-DP fit of the class-centroid model."""
    import torch

    from client.distributed_round import centroid_sums
    from common.centroid import (
        CentroidClassifier,
        centre_from_sum,
        centroid_weights,
        projection_for,
    )
    from common.config import ModelConfig
    from common.distributed_dp import NoisePlan
    from common.model import ModelSpec

    fed = _Federation(seed)
    plan = (NoisePlan.calibrate(epsilon, 1e-5, 2, radius, len(fed.sites), centre_round=True)
            if math.isfinite(epsilon) else None)
    counts = fed.noised_counts(plan)
    model = CentroidClassifier(ModelSpec.for_schema(ModelConfig(), fed.schema))
    exact = plan or NoisePlan(1.0, 1e-5, 2, radius, 1, 1.0, 1.0, 1.0, centre_noise=1.0)
    noise_std = plan.round_noise(2) * radius if plan else 0.0
    k = projection_for(model.centre.shape[0], noise_std, counts, radius)
    exact = replace(exact, projection=k, projection_seed=seed)
    with torch.no_grad():
        centre = sum(centroid_sums(model, *s, exact, 1)[0]["centre"] for s in fed.sites)
        centre = centre.numpy() + fed.noise(plan, 1, 1.0, centre.shape)
        model.centre.copy_(torch.from_numpy(centre_from_sum(centre, counts.sum(), k, seed)))
        sums = sum(centroid_sums(model, *s, exact, 2)[0]["head.weight"] for s in fed.sites)
        sums = sums.numpy() + fed.noise(plan, 2, radius, sums.shape)
        weight, bias = centroid_weights(sums, counts, noise_std, k, seed)
        model.head.weight.copy_(torch.from_numpy(weight))
        model.head.bias.copy_(torch.from_numpy(bias))
    return {"model": "centroid", "epsilon": epsilon, "seed": seed, "projection": k,
            **fed.scores(model)}


def run(seed: int, epsilon: float, *, rounds: int, lr: float, momentum: float,
        d_model: int, clip: float = 1.0) -> dict:
    """Scores of one emulated distributed-DP run of the transformer."""
    import torch

    from client.distributed_dp import clipped_gradient_sum
    from common.config import ModelConfig, RunConfig
    from common.distributed_dp import NoisePlan
    from common.model import ModelSpec, build_model
    from common.optimization import lr_at

    cfg = RunConfig.preset("distributed", model_kind="mmt", seed=seed)
    fed = _Federation(seed)
    schema, sites, rng = fed.schema, fed.sites, fed.rng
    plan = (NoisePlan.calibrate(epsilon, 1e-5, rounds, clip, len(sites))
            if math.isfinite(epsilon) else None)
    counts = fed.noised_counts(plan)
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
    return {"model": "mmt", "epsilon": epsilon, "seed": seed, **fed.scores(model)}


def main() -> None:
    from common.config import (
        CENTROID_RADIUS,
        DISTRIBUTED_D_MODEL,
        DISTRIBUTED_LR,
        DISTRIBUTED_ROUNDS,
        RunConfig,
    )

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 3.0, 8.0, math.inf])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=DISTRIBUTED_ROUNDS)
    parser.add_argument("--lr", type=float, default=DISTRIBUTED_LR)
    parser.add_argument("--d-model", type=int, default=DISTRIBUTED_D_MODEL)
    parser.add_argument("--model", nargs="+", default=["mmt", "centroid"],
                        choices=["mmt", "centroid"])
    parser.add_argument("--radius", type=float, default=CENTROID_RADIUS,
                        help="centroid: clipping radius of the deviations")
    args = parser.parse_args()
    momentum = RunConfig().server_momentum
    for eps in args.epsilons:
        for kind in args.model:
            runs = [run_centroid(seed, eps, radius=args.radius) if kind == "centroid"
                    else run(seed, eps, rounds=args.rounds, lr=args.lr, momentum=momentum,
                             d_model=args.d_model) for seed in args.seeds]
            for r in runs:
                print(json.dumps(r), flush=True)
            val = [r["val_f1_macro"] for r in runs]
            f1 = [r["test_f1_macro"] for r in runs]
            recall = {c: np.mean([r["recall"][c] for r in runs]) for c in runs[0]["recall"]}
            print(f"{kind} epsilon {eps:g}: validation macro-F1 {np.mean(val):.3f} ± "
                  f"{np.std(val):.3f}; test macro-F1 {np.mean(f1):.3f} ± {np.std(f1):.3f}; "
                  "test recall " + ", ".join(f"{c} {v:.2f}" for c, v in recall.items()),
                  flush=True)


if __name__ == "__main__":
    main()
