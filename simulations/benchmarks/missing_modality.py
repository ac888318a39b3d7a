"""Benchmark: a modality absent at test time, against the complete test data.

Trains the default model centrally on each seed's pooled training split (the
federation's hospitals' rows, selected on their validation rows), then scores the
validation rows (what a setting is chosen on) and the held-out test split, complete and
with each modality removed from every patient (features zeroed and masked, as a hospital
without that assay would send them). ``--modality-dropout`` sets the training-time
probability of hiding a modality.

    OMP_NUM_THREADS=1 python -m simulations.benchmarks.missing_modality --data brca \\
        --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np


def without(data, modality: str):
    """``data`` with ``modality`` absent for every patient."""
    j = data.modality_names.index(modality)
    mask = data.mask.copy()
    mask[:, j] = False
    features = dict(data.features)
    features[modality] = np.zeros_like(features[modality])
    return replace(data, features=features, mask=mask)


def run(data: str, seed: int, partition: str, modality_dropout: float | None) -> dict:
    from common.bundle import load_bundle
    from common.config import RunConfig
    from common.metrics import classification_metrics
    from common.simulated_federation import load_federation
    from simulations.central import pooled_split, train_central

    cfg = RunConfig.preset("none", data=data, seed=seed, partition=partition)
    if modality_dropout is not None:
        cfg = replace(cfg, model=replace(cfg.model, modality_dropout=modality_dropout))
    fed = load_federation(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        train_central(fed, cfg, Path(tmp) / "model")
        bundle = load_bundle(Path(tmp) / "model")
        labels = bundle.schema.label_names

        def score(d) -> float:
            return classification_metrics(d.labels, bundle.predict_proba(d), labels)["f1_macro"]

        out = {}
        for split, d in (("val", pooled_split(fed)[1]), ("test", fed.test)):
            out[f"{split} complete"] = score(d)
            for m in d.modality_names:
                out[f"{split} without {m}"] = score(without(d, m))
    return {"data": data, "seed": seed, **out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="brca")
    parser.add_argument("--partition", default="site")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--modality-dropout", type=float, default=None,
                        help="training-time probability of hiding a modality (default: "
                        "the model's)")
    args = parser.parse_args()
    rows = [run(args.data, seed, args.partition, args.modality_dropout) for seed in args.seeds]
    for row in rows:
        print(json.dumps(row), flush=True)
    for key in [k for k in rows[0] if k not in ("data", "seed")]:
        values = [r[key] for r in rows]
        complete = key.split(" ")[0] + " complete"
        drop = [r[complete] - r[key] for r in rows]
        print(f"{args.data} {key}: macro-F1 {np.mean(values):.3f} ± {np.std(values):.3f}"
              f" (drop {np.mean(drop):+.3f})", flush=True)


if __name__ == "__main__":
    main()
