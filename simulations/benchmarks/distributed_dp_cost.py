"""Benchmark: a site's compute in a distributed-DP round against the same round without DP.

On the largest site of the bundled BRCA federation (seed 0), the median time of what a
site computes for one training round, over ``--repeats`` runs:

* class-centroid model (the default): its noised release (class sums of clipped
  deviations plus a Gaussian share on every state tensor) against the same class sums
  without clipping or noise;
* transformer (``--model mmt``): the clipped per-patient gradient sum plus noise against
  one ordinary full-batch gradient of the same model.

Secure aggregation's messaging is the same with and without DP and is not timed here.

    python -m simulations.benchmarks.distributed_dp_cost
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    import torch

    from client.distributed_dp import clipped_gradient_sum
    from client.distributed_round import centroid_sums
    from common.config import CENTROID_KIND, ModelConfig, RunConfig
    from common.discrete_dp import integer_scale, skellam_share
    from common.distributed_dp import NoisePlan
    from common.model import ModelSpec, build_model
    from common.preprocessing import Standardizer
    from common.simulated_federation import load_federation
    from common.training import tensors

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    fed = load_federation(RunConfig(seed=0))
    schema = fed.pool.schema
    sizes = [len(fed.site_data(i)[1].labels) for i in range(len(fed.plan.sites))]
    train = fed.site_data(int(np.argmax(sizes)))[1]
    x, mask, y = tensors(Standardizer.for_each_patient(schema).transform(train.align_to(schema)))
    n_classes = schema.n_classes

    centroid = build_model(ModelSpec.for_schema(ModelConfig(kind=CENTROID_KIND), schema))
    plan = NoisePlan.calibrate(8.0, 1e-5, 2, 0.5, 12, centre_round=True)
    state = centroid.state_dict()

    def centroid_dp() -> None:
        sums, _ = centroid_sums(centroid, x, mask, y, plan, 2, in_units=True)
        for name, ref in state.items():
            value = sums.get(name, torch.zeros_like(ref)).double().numpy()
            value + skellam_share(value.shape, 1e6)

    def centroid_plain() -> None:
        with torch.no_grad():
            onehot = torch.nn.functional.one_hot(y, n_classes).to(x.dtype)
            onehot.T @ (centroid.patient_vectors(x, mask) - centroid.centre)

    mmt = build_model(ModelSpec.for_schema(RunConfig.preset(
        "distributed", model_kind="mmt").model, schema))
    log_prior = torch.zeros(n_classes)

    def mmt_dp() -> None:
        sums, _ = clipped_gradient_sum(mmt, x, mask, y, log_prior, 1.0,
                                       units=integer_scale(1.0))
        for v in sums.values():
            v.numpy() + skellam_share(tuple(v.shape), 1e6)

    def mmt_plain() -> None:
        mmt.zero_grad()
        torch.nn.functional.cross_entropy(mmt(x, mask) + log_prior, y).backward()

    print(f"largest site: {len(y)} training patients, {x.shape[1]} features")
    print("| model | DP release (ms) | without DP (ms) | ratio |")
    print("|---|---|---|---|")
    for name, dp, plain in (("class centroid", centroid_dp, centroid_plain),
                            ("transformer", mmt_dp, mmt_plain)):
        a, b = _median_ms(dp, args.repeats), _median_ms(plain, args.repeats)
        print(f"| {name} | {a:.1f} | {b:.1f} | {a / b:.2f}x |")


if __name__ == "__main__":
    main()
