"""Load: many simulated users (locust) mixing predict, batch and explain on loopback.

Starts a real ``serve`` process on a trained bundle registered as production (the same
way as ``serving_latency``), runs the locust scenario of ``serving_load_users`` headless
for a fixed time, and prints p50/p95/p99, throughput and errors per endpoint:

    cancer-alpha train-central --data brca --epochs 3 --out runs/central
    flock /tmp/bench.lock python -m simulations.benchmarks.serving_load \\
        --model runs/central --users 500 --spawn-rate 50 --duration 60

Writes ``serving_load.json`` (and locust's CSV files) to ``--out`` (default: a temp dir).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from simulations.benchmarks.serving_latency import start_server, stop_server

logger = logging.getLogger(__name__)

USERS_FILE = Path(__file__).with_name("serving_load_users.py")


@dataclass
class EndpointLoad:
    """One endpoint's figures over the run (milliseconds, requests per second)."""

    name: str
    requests: int
    errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    requests_per_s: float


@dataclass
class CpuSplit:
    """CPU seconds spent during the run by the service (all workers) and by locust."""

    service_s: float
    locust_s: float


def run_scenario(port: int, token: str, patients: list[dict[str, Any]], workdir: Path, *,
                 users: int, spawn_rate: float, seconds: float) -> list[EndpointLoad]:
    """Run the locust scenario against 127.0.0.1:``port``; one row per endpoint + total."""
    workdir.mkdir(parents=True, exist_ok=True)
    bodies = workdir / "patients.json"
    bodies.write_text(json.dumps(patients), encoding="utf-8")
    env = {**os.environ, "CANCER_ALPHA_LOAD_BODIES": str(bodies),
           "CANCER_ALPHA_LOAD_TOKEN": token}
    prefix = workdir / "locust"
    cmd = [sys.executable, "-m", "locust", "-f", str(USERS_FILE), "--headless",
           "--host", f"http://127.0.0.1:{port}", "--users", str(users),
           "--spawn-rate", str(spawn_rate), "--run-time", f"{seconds:g}s",
           "--stop-timeout", "30", "--csv", str(prefix), "--only-summary",
           "--loglevel", "WARNING", "--exit-code-on-error", "0"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True,
                          timeout=seconds + 120)
    if done.returncode != 0:
        raise RuntimeError(f"locust failed ({done.returncode}): {done.stderr[-2000:]}")
    return read_stats(prefix.with_name(prefix.name + "_stats.csv"))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its live children (``/proc``)."""
    import psutil  # locust's own dependency

    proc = psutil.Process(pid)
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def children_cpu_seconds() -> float:
    """CPU seconds of this process's finished children (locust, once it has exited)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def read_stats(path: Path) -> list[EndpointLoad]:
    """Locust's ``*_stats.csv`` as rows (its percentiles are whole milliseconds)."""
    rows = []
    with path.open(newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            rows.append(EndpointLoad(
                name=r["Name"], requests=int(r["Request Count"]),
                errors=int(r["Failure Count"]), p50_ms=float(r["50%"]),
                p95_ms=float(r["95%"]), p99_ms=float(r["99%"]),
                requests_per_s=float(r["Requests/s"])))
    return rows


def patients_of(data: Any, limit: int = 256) -> list[dict[str, Any]]:
    """Request bodies ({"modalities": ...}) of the dataset's first ``limit`` patients."""
    out = []
    for i in range(min(limit, data.n)):
        mods = {m: dict(zip(data.schema.features(m), map(float, data.features[m][i]),
                            strict=True))
                for j, m in enumerate(data.modality_names) if data.mask[i, j]}
        out.append({"modalities": mods})
    return out


def print_table(rows: list[EndpointLoad]) -> None:
    print("| endpoint | requests | errors | p50 ms | p95 ms | p99 ms | req/s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.name} | {r.requests} | {r.errors} | {r.p50_ms:.0f} | {r.p95_ms:.0f} | "
              f"{r.p99_ms:.0f} | {r.requests_per_s:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path, help="Run or bundle directory.")
    parser.add_argument("--data", default="brca", help="Dataset for the patients (alias/dir).")
    parser.add_argument("--users", type=int, default=500, help="Simulated users.")
    parser.add_argument("--spawn-rate", type=float, default=50.0, help="Users started per s.")
    parser.add_argument("--duration", type=float, default=60.0, help="Seconds of load.")
    # One worker per core: a worker's Python code runs on one core at a time.
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers.")
    parser.add_argument("--threads", type=int, default=1, help="Torch threads per worker.")
    parser.add_argument("--out", type=Path, default=None, help="Directory for the results.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from common.bundle import load_bundle
    from common.dataset import load_dataset
    from common.paths import resolve_data_dir

    bundle = load_bundle(args.model)
    patients = patients_of(load_dataset(resolve_data_dir(args.data), schema=bundle.schema))
    out = args.out or Path(tempfile.mkdtemp(prefix="serving-load-"))
    with tempfile.TemporaryDirectory(prefix="serving-load-db-") as tmp:
        server = start_server(args.model, Path(tmp), args.workers, args.threads)
        try:
            server_before, locust_before = cpu_seconds(server.proc.pid), children_cpu_seconds()
            rows = run_scenario(server.port, server.token, patients, out, users=args.users,
                                spawn_rate=args.spawn_rate, seconds=args.duration)
            cpu = CpuSplit(service_s=cpu_seconds(server.proc.pid) - server_before,
                           locust_s=children_cpu_seconds() - locust_before)
        finally:
            stop_server(server)
    print_table(rows)
    print(f"CPU seconds over the run: service {cpu.service_s:.1f}, locust {cpu.locust_s:.1f} "
          f"(2 cores give {2 * args.duration:.0f}); load average {os.getloadavg()[0]:.2f}")
    (out / "serving_load.json").write_text(json.dumps(
        {"users": args.users, "spawn_rate": args.spawn_rate, "duration_s": args.duration,
         "workers": args.workers, "threads": args.threads, "load_average": os.getloadavg(),
         "cpu_seconds": asdict(cpu),
         "endpoints": [asdict(r) for r in rows]}, indent=2), encoding="utf-8")
    print(f"results in {out}")


if __name__ == "__main__":
    main()
