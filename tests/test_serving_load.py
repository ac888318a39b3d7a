"""The load scenario (locust: predict, batch, explain) for a few seconds against a really
started ``serve`` process: it runs, and nothing fails."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from test_serving_helpers import make_bundle, make_data, patient_json

# Only looked up: importing locust here would monkey-patch this process with gevent.
pytestmark = pytest.mark.skipif(importlib.util.find_spec("locust") is None,
                                reason="locust is in the test extra")


@pytest.mark.e2e
def test_load_scenario_runs_without_errors(tmp_path: Path, monkeypatch) -> None:
    from simulations.benchmarks.serving_latency import start_server, stop_server
    from simulations.benchmarks.serving_load import run_scenario

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run = make_bundle(tmp_path / "run")
    data = make_data(n=12, seed=4)
    patients = [patient_json(data, i) for i in range(data.n)]
    server = start_server(run, tmp_path, workers=1, threads=1)
    try:
        rows = run_scenario(server.port, server.token, patients, tmp_path / "load",
                            users=6, spawn_rate=6, seconds=5)
    finally:
        stop_server(server)
    by_name = {r.name: r for r in rows}
    # Explanations are 1 in 10 tasks: a 5 s run may draw none (concurrent explanations
    # are tested in test_report_explain.py), predictions and batches it always draws.
    assert {"/v1/predict", "/v1/predict/batch"} <= set(by_name)
    total = by_name["Aggregated"]
    assert total.requests >= 6 and total.errors == 0
    assert all(r.p95_ms > 0 for r in rows if r.requests)
