"""The Redis-backed prediction cache against a real redis-server: hits shared through
Redis, model-scoped keys without patient values, emptied on promotion, and a service
that keeps answering (computing) when Redis goes away."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from test_serving_helpers import (
    make_bundle,
    make_data,
    make_settings,
    patient_json,
    register,
    tokens,
)

from server.serving.prediction_cache import (
    PredictionCache,
    RedisPredictionCache,
    open_prediction_cache,
)

REDIS_SERVER = shutil.which("redis-server")
pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.skipif(REDIS_SERVER is None,
                       reason="redis-server is not installed (Debian package redis-server)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """A throwaway redis-server on a free loopback port, no persistence."""
    import redis

    port = _free_port()
    proc = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail(f"redis-server did not start on port {port}")
            time.sleep(0.05)
    yield url, proc
    proc.kill()
    proc.wait(timeout=10)


def _metric(text: str, result: str) -> float:
    for line in text.splitlines():
        if line.startswith("cancer_alpha_prediction_cache_lookups_total{") and \
                f'result="{result}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_redis_cache_round_trip_scoping_and_clear(redis_url) -> None:
    url, _ = redis_url
    cache = open_prediction_cache(True, 10, url)
    assert isinstance(cache, RedisPredictionCache)
    other = RedisPredictionCache(url, namespace="another-service")
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    mask = np.ones((2, 2), dtype=bool)
    k1 = cache.key("m:1", x[0], mask[0])
    assert k1 == PredictionCache.key("m:1", x[0], mask[0])  # one key scheme for both
    assert cache.get(k1) is None
    cache.put(k1, np.array([0.25, 0.75]))
    other.put(k1, np.array([0.5, 0.5]))
    np.testing.assert_array_equal(cache.get(k1), np.array([0.25, 0.75], dtype=np.float32))
    assert cache.get(cache.key("m:2", x[0], mask[0])) is None  # another model: no match
    assert (cache.hits, cache.misses) == (1, 2) and len(cache) == 1
    cache.clear()
    assert len(cache) == 0 and cache.get(k1) is None
    assert len(other) == 1  # another namespace is left alone
    assert isinstance(open_prediction_cache(True, 10, ""), PredictionCache)
    assert open_prediction_cache(False, 10, url) is None


def test_service_shares_hits_through_redis_and_survives_its_loss(redis_url,
                                                                 tmp_path: Path) -> None:
    import redis
    from fastapi.testclient import TestClient

    from server.serving.app import create_app

    url, proc = redis_url
    run = make_bundle(tmp_path / "run")
    settings = make_settings(tmp_path, prediction_cache_redis_url=url)
    ref = register(settings, run)
    token = {role: {"Authorization": f"Bearer {t}"} for role, t in tokens(settings).items()}
    # Two apps (two workers) on one Redis: the second answers from the first's entry.
    first, second = (TestClient(create_app(settings)) for _ in range(2))
    body = patient_json(make_data(n=4, seed=7), 1)
    a = first.post("/v1/predict", json=body, headers=token["researcher"])
    b = second.post("/v1/predict", json=body, headers=token["researcher"])
    assert a.status_code == b.status_code == 200
    assert a.json()["prediction"]["probabilities"] == b.json()["prediction"]["probabilities"]
    metrics = second.get("/metrics", headers=token["admin"]).text
    assert _metric(metrics, "hit") >= 1

    client = redis.Redis.from_url(url)
    names = [n.decode() for n in client.keys("*")]
    assert names and all(n.startswith(f"cancer-alpha:prediction:{ref}:") for n in names)
    held = json.dumps(names)
    assert body["patient_id"] not in held and all(
        repr(v) not in held for values in body["modalities"].values() for v in values.values())

    # Promotion empties the shared cache.
    r = first.post(f"/v1/models/{ref}/promote", json={"stage": "production"},
                   headers=token["admin"])
    assert r.status_code == 200 and client.keys("*") == []

    # Redis gone: the service computes every answer itself, without errors.
    proc.kill()
    proc.wait(timeout=10)
    for _ in range(3):
        c = second.post("/v1/predict", json=body, headers=token["researcher"])
        assert c.status_code == 200
        assert c.json()["prediction"]["probabilities"] == a.json()["prediction"]["probabilities"]
    cache = second.app.state.serving.batcher.cache
    assert isinstance(cache, RedisPredictionCache) and cache.errors >= 3
