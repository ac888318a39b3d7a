"""CPU cost of the pieces of one prediction request, timed one at a time in-process:

    flock /tmp/bench.lock python -m simulations.benchmarks.serving_load_parts \\
        --model runs/central

Body validation, encoding and standardization, the forward pass (1 and 8 patients,
one torch thread as a served worker has), the token check (full and from the verified
claims) and building the answer (validated and constructed). What is left of
``serving_load_cost``'s per-request figure is HTTP, routing, dependencies, the audit
transaction and metrics.
"""

from __future__ import annotations

import argparse
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path


def cpu_us(fn: Callable[[], object], n: int) -> float:
    """Process CPU microseconds per call of ``fn`` over ``n`` calls, after a warm-up."""
    for _ in range(max(3, n // 20)):
        fn()
    start = time.process_time()
    for _ in range(n):
        fn()
    return 1e6 * (time.process_time() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path, help="Run or bundle directory.")
    parser.add_argument("--data", default="brca", help="Dataset for the patients (alias/dir).")
    parser.add_argument("--n", type=int, default=300, help="Calls per piece.")
    args = parser.parse_args()

    import torch

    from common.bundle import load_bundle
    from common.dataset import load_dataset
    from common.paths import resolve_data_dir
    from server.serving import schemas as s
    from server.serving.api.records import prediction_of
    from server.serving.auth import Role, TokenService
    from server.serving.predictor import Predictor, ServedModel
    from server.serving.settings import AuthSettings
    from simulations.benchmarks.serving_load import patients_of

    torch.set_num_threads(1)
    bundle = load_bundle(args.model)
    patients = patients_of(load_dataset(resolve_data_dir(args.data), schema=bundle.schema))
    predictor = Predictor(bundle, ServedModel("bench:1", "bench", 1, "production", "0" * 64))
    body = json.dumps(patients[0]).encode()
    one = [patients[0]["modalities"]]
    eight = [p["modalities"] for p in patients[:8]]
    x1, m1 = predictor.encode(one)
    x8, m8 = predictor.encode(eight, indexed=True)
    tokens = TokenService(AuthSettings(secret=secrets.token_urlsafe(48)))
    token = tokens.issue("bench", Role.RESEARCHER, 3600)
    result = predictor.results(predictor.forward(x1, m1), m1, ["P"], ("body",))[0]
    n = args.n
    pieces: dict[str, Callable[[], object]] = {
        "validate the body (pydantic, 1 patient)": lambda: s.PredictRequest.model_validate_json(
            body),
        "encode + standardize (1 patient)": lambda: predictor.encode(one),
        "forward pass, 1 patient": lambda: predictor.forward(x1, m1),
        "forward pass, 8 patients": lambda: predictor.forward(x8, m8),
        "token: signature checked": lambda: tokens._decode(token),
        "token: verified claims": lambda: tokens.verify(token),
        "answer: Prediction(**asdict(r))": lambda: s.Prediction(**asdict(result)),
        "answer: prediction_of(r)": lambda: prediction_of(result),
    }
    for name, fn in pieces.items():
        calls = n if "forward" not in name else max(20, n // 3)
        print(f"{name:42s} {cpu_us(fn, calls) / 1000:7.3f} ms CPU")


if __name__ == "__main__":
    main()
