"""CPU cost of one request per endpoint: the service's CPU seconds over sequential requests.

Starts a real ``serve`` process (as ``serving_load`` does), sends requests one at a time
(predict, a batch of 8, an explanation of a random patient, the same patient explained
again) and divides the CPU time the service's processes used by the number of requests:

    flock /tmp/bench.lock python -m simulations.benchmarks.serving_load_cost \\
        --model runs/central --requests 200

Sequential requests are the costliest case: no two share a forward pass or an audit
transaction. Times the offered request rate, this bounds what the cores can serve.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from simulations.benchmarks.serving_latency import start_server, stop_server
from simulations.benchmarks.serving_load import cpu_seconds, patients_of

# As in serving_load_users, which cannot be imported outside locust (it patches with gevent).
BATCH_SIZE = 8
EXPLAIN_STEPS = 16


def measure(name: str, send: Callable[[], int], pid: int, n: int) -> tuple[float, float]:
    """(service CPU ms, wall ms) per request over ``n`` requests after a short warm-up."""
    for _ in range(5):
        if (status := send()) != 200:
            raise RuntimeError(f"{name}: status {status}")
    before, start = cpu_seconds(pid), time.perf_counter()
    for _ in range(n):
        if (status := send()) != 200:
            raise RuntimeError(f"{name}: status {status}")
    return 1000 * (cpu_seconds(pid) - before) / n, 1000 * (time.perf_counter() - start) / n


def main() -> None:
    import httpx

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path, help="Run or bundle directory.")
    parser.add_argument("--data", default="brca", help="Dataset for the patients (alias/dir).")
    parser.add_argument("--requests", type=int, default=200,
                        help="Requests per endpoint (a quarter of it for explanations).")
    args = parser.parse_args()

    from common.bundle import load_bundle
    from common.dataset import load_dataset
    from common.paths import resolve_data_dir

    bundle = load_bundle(args.model)
    patients = patients_of(load_dataset(resolve_data_dir(args.data), schema=bundle.schema))
    rng = random.Random(0)
    with tempfile.TemporaryDirectory(prefix="serving-cost-") as tmp:
        server = start_server(args.model, Path(tmp), workers=1, threads=1)
        try:
            client = httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=60,
                                  headers={"Authorization": f"Bearer {server.token}"})
            explain = {"steps": EXPLAIN_STEPS, "top_k": 10}
            kinds: dict[str, Callable[[], int]] = {
                "predict": lambda: client.post("/v1/predict",
                                               json=rng.choice(patients)).status_code,
                f"batch of {BATCH_SIZE}": lambda: client.post("/v1/predict/batch", json={
                    "patients": rng.sample(patients, BATCH_SIZE)}).status_code,
                "explain": lambda: client.post(
                    "/v1/explain", json={**rng.choice(patients), **explain}).status_code,
                "explain, same patient": lambda: client.post(
                    "/v1/explain", json={**patients[0], **explain}).status_code,
            }
            for name, send in kinds.items():
                n = args.requests if not name.startswith("explain") else args.requests // 4
                cpu_ms, wall_ms = measure(name, send, server.proc.pid, max(n, 10))
                print(f"{name:22s} service CPU {cpu_ms:6.2f} ms/request, wall {wall_ms:6.2f} ms")
        finally:
            stop_server(server)


if __name__ == "__main__":
    main()
