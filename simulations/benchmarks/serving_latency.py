"""Benchmark: model forward latency and HTTP latency/throughput of the inference service.

One run measures, on real BRCA test patients and a trained model bundle:

1. raw forward latency per sample (p50/p95) at batch 1 and batch 64, one CPU thread
   (what one server worker uses), for the served TorchScript module and the eager network;
2. HTTP latency of ``POST /v1/predict`` (p50/p95/p99) against a real ``serve`` process
   (uvicorn) at concurrency 1 and 32;
3. sustained requests/s over a fixed time at concurrency 32, with the error count and
   the server's CPU time per request (which says where the limit is);

for each requested number of uvicorn workers.

The load generator is a small asyncio HTTP/1.1 client with keep-alive connections and
pre-encoded requests, so that on a 2-core machine it takes as little CPU from the server
as possible; every response is parsed and checked (status 200, a predicted label).
Requests go to 127.0.0.1 only, and every loop is bounded in count and time.

    cancer-alpha train-central --data brca --epochs 8 --out runs/central
    python -m simulations.benchmarks.serving_latency --model runs/central --workers 1 2

Prints a table and writes ``serving_latency.json`` to ``--out`` (default: a temp dir).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.processes import free_port, stop_process

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------ forward
def forward_latency(model_dir: Path, data: Any, threads: int = 1) -> list[dict[str, Any]]:
    """Per-sample forward latency of the served module and the eager network."""
    from common.bundle import load_bundle
    from server.serving.predictor import Predictor, ServedModel, configure_torch

    configure_torch(threads)
    bundle = load_bundle(model_dir)
    identity = ServedModel("bench", "bench", None, None, bundle.schema.content_hash())
    predictor = Predictor(bundle, identity, torchscript=True)
    prepared = bundle.prepare(data)
    x_all = np.ascontiguousarray(prepared.concat(), dtype=np.float32)
    m_all = prepared.mask
    rows = []
    for name, fn in (("TorchScript (served)", predictor.forward),
                     ("eager nn.Module", _eager(predictor.model))):
        for batch, calls in ((1, 2000), (64, 300)):
            times = []
            for k in range(calls + 20):
                idx = np.arange(k * batch, (k + 1) * batch) % len(x_all)
                x, m = x_all[idx], m_all[idx]
                t0 = time.perf_counter()
                fn(x, m)
                if k >= 20:  # warm-up excluded
                    times.append((time.perf_counter() - t0) / batch)
            ms = np.array(times) * 1e3
            rows.append({"what": f"forward, {name}", "batch": batch, "threads": threads,
                         "p50_ms_per_sample": float(np.percentile(ms, 50)),
                         "p95_ms_per_sample": float(np.percentile(ms, 95)), "calls": calls})
    return rows


def _eager(model: Any) -> Any:
    import torch

    def run(x: np.ndarray, m: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            logits = model(torch.from_numpy(x), torch.from_numpy(m.astype(np.float32)))
            return torch.softmax(logits, dim=-1).numpy()

    return run


# --------------------------------------------------------------------------- the server
@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    env: dict[str, str]
    token: str
    lead_token: str


def start_server(model_dir: Path, workdir: Path, workers: int, threads: int) -> Server:
    from server.serving.audit_log import AuditLog
    from server.serving.auth import TokenService
    from server.serving.database import open_database
    from server.serving.registry import Actor, Registry
    from server.serving.settings import ServingSettings

    db = f"sqlite:///{workdir / 'serving.db'}"
    env = {**os.environ, "CANCER_ALPHA_DATABASE_URL": db,
           "CANCER_ALPHA_JWT_SECRET": secrets.token_urlsafe(48)}
    _, sessions = open_database(db)
    registry = Registry(sessions, AuditLog(sessions))
    rec = registry.add(model_dir, name="bench", actor=Actor("benchmark", "admin"))
    registry.promote(rec.ref, actor=Actor("benchmark", "admin"))
    tokens = TokenService(ServingSettings.load(env=env).auth)
    port = free_port()
    log = (workdir / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.serving", "serve", "--port", str(port), "--model",
         "bench:production", "--workers", str(workers), "--threads", str(threads),
         "--log-level", "warning"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = Server(proc, port, env, tokens.issue("bench", "researcher", 7200),
                    tokens.issue("bench-lead", "lead", 7200))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {(workdir / 'server.log').read_text()}")
        try:
            status, _ = asyncio.run(_one_get(port, "/readyz"))
            if status == 200:
                return server
        except OSError:
            pass
        time.sleep(0.3)
    stop_server(server)
    raise RuntimeError("server did not become ready within 180 s")


def stop_server(server: Server) -> None:
    stop_process(server.proc, grace=30)


# ------------------------------------------------------------------------- load client
async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
            break
    body = await reader.readexactly(length)
    return status, body


async def _one_get(port: int, path: str, token: str = "") -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\n".encode())
    await writer.drain()
    try:
        return await asyncio.wait_for(_read_response(reader), 30)
    finally:
        writer.close()


def encode_requests(bodies: list[bytes], token: str) -> list[bytes]:
    return [(f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}"
             f"\r\nContent-Type: application/json\r\nContent-Length: {len(b)}\r\n\r\n"
             ).encode() + b for b in bodies]


@dataclass
class LoadResult:
    latencies_s: list[float] = field(default_factory=list)
    errors: int = 0
    error_examples: list[str] = field(default_factory=list)
    seconds: float = 0.0


async def run_load(port: int, requests: list[bytes], labels: set[str], concurrency: int,
                   *, total: int | None = None, duration: float | None = None) -> LoadResult:
    """``concurrency`` keep-alive connections sending requests back to back, until
    ``total`` requests are done or ``duration`` seconds have passed (both bounded)."""
    result = LoadResult()
    sent = 0
    stop_at = time.perf_counter() + (duration if duration is not None else 600)
    limit = total if total is not None else 10**7

    async def worker(k: int) -> None:
        nonlocal sent
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while sent < limit and time.perf_counter() < stop_at:
                req = requests[(sent + k) % len(requests)]
                sent += 1
                t0 = time.perf_counter()
                try:
                    writer.write(req)
                    status, body = await asyncio.wait_for(_read_response(reader), 30)
                except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                    result.errors += 1
                    result.error_examples.append(repr(exc))
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    continue
                result.latencies_s.append(time.perf_counter() - t0)
                if status != 200 or json.loads(body)["prediction"]["label"] not in labels:
                    result.errors += 1
                    result.error_examples.append(f"{status}: {body[:200]!r}")
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    result.seconds = time.perf_counter() - t0
    return result


def http_row(name: str, concurrency: int, r: LoadResult) -> dict[str, Any]:
    ms = np.array(r.latencies_s) * 1e3
    return {"what": name, "concurrency": concurrency, "requests": len(r.latencies_s),
            "errors": r.errors, "seconds": r.seconds,
            "requests_per_s": len(r.latencies_s) / r.seconds if r.seconds else 0.0,
            "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99)), "error_examples": r.error_examples[:3]}


# ---------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path, help="Run or bundle directory.")
    parser.add_argument("--data", default="brca", help="Dataset for the patients (alias/dir).")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="uvicorn worker counts to measure (one server each).")
    parser.add_argument("--threads", type=int, default=1, help="Torch threads per worker.")
    parser.add_argument("--requests", type=int, default=1000,
                        help="Requests for the concurrency-1 latency run.")
    parser.add_argument("--duration", type=float, default=30.0,
                        help="Seconds of the concurrency-32 sustained run.")
    parser.add_argument("--out", type=Path, default=None, help="Directory for the JSON.")
    args = parser.parse_args()

    from common.bundle import load_bundle
    from common.dataset import load_dataset
    from common.paths import resolve_data_dir

    bundle = load_bundle(args.model)
    data = load_dataset(resolve_data_dir(args.data), schema=bundle.schema)
    bodies = []
    for i in range(min(256, data.n)):
        mods = {m: dict(zip(data.schema.features(m), map(float, data.features[m][i]),
                            strict=True))
                for j, m in enumerate(data.modality_names) if data.mask[i, j]}
        bodies.append(json.dumps({"modalities": mods}).encode())
    print(f"{data.n} patients, {sum(bundle.schema.feature_counts().values())} features; "
          f"request body {np.mean([len(b) for b in bodies]) / 1024:.1f} KiB on average; "
          f"{os.cpu_count()} CPUs", flush=True)

    rows: list[dict[str, Any]] = forward_latency(args.model, data, args.threads)
    for r in rows:
        print(f"  {r['what']:32s} batch {r['batch']:3d}: p50 {r['p50_ms_per_sample']:.3f} "
              f"p95 {r['p95_ms_per_sample']:.3f} ms/sample", flush=True)

    out = args.out or Path(tempfile.mkdtemp(prefix="serving-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    labels = set(bundle.schema.label_names)
    http: list[dict[str, Any]] = []
    server_errors: dict[int, float | None] = {}
    for workers in args.workers:
        with tempfile.TemporaryDirectory(prefix="serving-bench-db-") as tmp:
            server = start_server(args.model, Path(tmp), workers, args.threads)
            try:
                requests = encode_requests(bodies, server.token)
                asyncio.run(run_load(server.port, requests, labels, 32, total=500))  # warm-up
                for concurrency, kw in ((1, {"total": args.requests}),
                                        (32, {"duration": args.duration})):
                    cpu0 = process_tree_cpu(server.proc.pid)
                    result = asyncio.run(run_load(server.port, requests, labels, concurrency,
                                                  **kw))
                    cpu = process_tree_cpu(server.proc.pid) - cpu0
                    row = http_row("HTTP POST /v1/predict", concurrency, result)
                    row.update(workers=workers, threads=args.threads,
                               server_cpu_ms_per_request=cpu / max(row["requests"], 1) * 1e3)
                    http.append(row)
                    print(f"  {workers} worker(s), c={concurrency:2d}: p50 {row['p50_ms']:.2f} "
                          f"p95 {row['p95_ms']:.2f} p99 {row['p99_ms']:.2f} ms, "
                          f"{row['requests_per_s']:.0f} req/s, {row['requests']} requests, "
                          f"{row['errors']} errors, server CPU "
                          f"{row['server_cpu_ms_per_request']:.2f} ms/request", flush=True)
                status, metrics = asyncio.run(_one_get(server.port, "/metrics",
                                                       server.lead_token))
                server_errors[workers] = (_server_errors(metrics.decode()) if status == 200
                                          else None)
            finally:
                stop_server(server)

    print()
    print("| measurement | setting | p50 | p95 | throughput | errors |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['what']} | batch {r['batch']}, {r['threads']} thread | "
              f"{r['p50_ms_per_sample']:.3f} ms/sample | {r['p95_ms_per_sample']:.3f} ms/sample"
              f" | {1000 / r['p50_ms_per_sample']:.0f} samples/s | |")
    for r in http:
        print(f"| HTTP POST /v1/predict | concurrency {r['concurrency']}, {r['workers']} "
              f"worker(s) x {r['threads']} thread | {r['p50_ms']:.2f} ms | {r['p95_ms']:.2f} ms "
              f"| {r['requests_per_s']:.0f} req/s ({r['requests']} in {r['seconds']:.0f} s; "
              f"server CPU {r['server_cpu_ms_per_request']:.2f} ms/request) | {r['errors']} |")
    print(f"\nserver-side errors counted in /metrics, per worker setting: {server_errors}")
    payload = {"forward": rows, "http": http, "server_errors_total": server_errors,
               "threads": args.threads, "cpus": os.cpu_count(),
               "load_average_after": os.getloadavg()}
    (out / "serving_latency.json").write_text(json.dumps(payload, indent=2))
    print(f"wrote {out / 'serving_latency.json'}")


def process_tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid`` and its children (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(entry) == pid or int(fields[1]) == pid:  # fields[1]: parent pid
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def _server_errors(text: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("cancer_alpha_errors_total{"))


if __name__ == "__main__":
    main()
