"""The prediction cache: an LRU keyed by model id and a digest of the standardized input,
answering repeated patients without a forward pass, still auditing every request,
emptied when a new production model is promoted, counted in Prometheus."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_serving_helpers import (
    call,
    make_data,
    make_settings,
    patient_json,
    serve_test_model,
)

from server.serving.audit_log import AuditLog, entry
from server.serving.batching import MicroBatcher
from server.serving.database import open_database
from server.serving.prediction_cache import PredictionCache
from server.serving.predictor import Predictor, ServedModel
from server.serving.settings import SettingsError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_lru_evicts_the_least_recently_used_and_counts() -> None:
    cache = PredictionCache(2)
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    mask = np.ones((3, 2), dtype=bool)
    keys = [PredictionCache.key("m:1", x[i], mask[i]) for i in range(3)]
    assert len(set(keys)) == 3 and all(k.startswith("m:1:") for k in keys)
    cache.put(keys[0], np.array([0.1, 0.9]))
    cache.put(keys[1], np.array([0.2, 0.8]))
    assert cache.get(keys[0]) is not None  # keys[0] is now the most recent
    cache.put(keys[2], np.array([0.3, 0.7]))  # evicts keys[1]
    assert cache.get(keys[1]) is None and len(cache) == 2
    np.testing.assert_allclose(cache.get(keys[2]), [0.3, 0.7])
    assert (cache.hits, cache.misses) == (2, 1)
    # Another model, or the same values with a modality marked missing: other keys.
    assert PredictionCache.key("m:2", x[0], mask[0]) != keys[0]
    assert PredictionCache.key("m:1", x[0], np.array([True, False])) != keys[0]
    cache.clear()
    assert len(cache) == 0 and cache.get(keys[2]) is None
    with pytest.raises(ValueError):
        PredictionCache(0)


@pytest.fixture(scope="module")
def served(tmp_path_factory, one_torch_thread) -> dict[str, Any]:
    return serve_test_model(tmp_path_factory.mktemp("cache"))


@pytest.fixture
def parts(served, tmp_path: Path):
    bundle = served["bundle"]
    predictor = Predictor(bundle, ServedModel("m:1", "m", 1, "production", ""),
                          torchscript=False)
    _, sessions = open_database(make_settings(tmp_path).database_url)
    return bundle, predictor, AuditLog(sessions)


def test_batcher_answers_seen_patients_from_the_cache_and_audits_every_request(parts) -> None:
    bundle, predictor, audit = parts
    data = make_data(n=6, seed=3)
    x, mask = predictor.prepare_data(data)
    lookups: list[tuple[int, int]] = []
    batcher = MicroBatcher(predictor, audit, cache=PredictionCache(100),
                           on_cache_lookup=lambda h, m: lookups.append((h, m)))

    async def ask(rows: slice, rid: str) -> np.ndarray:
        return await batcher.run(x[rows], mask[rows], entry(
            actor="u", role="researcher", action="predict_batch", request_id=rid))

    first = asyncio.run(ask(slice(0, 4), "r1"))  # 4 misses: one forward pass
    assert batcher.batches == 1
    again = asyncio.run(ask(slice(0, 4), "r2"))  # 4 hits: no forward pass
    assert batcher.batches == 1
    mixed = asyncio.run(ask(slice(2, 6), "r3"))  # 2 hits, 2 misses: a pass over 2 rows
    batcher.close()
    assert batcher.batches == 2
    assert lookups == [(0, 4), (4, 0), (2, 2)]
    want = bundle.predict_proba(data)
    np.testing.assert_allclose(first, want[:4], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(again, first)
    np.testing.assert_allclose(mixed, want[2:6], rtol=1e-5, atol=1e-6)
    assert [r.request_id for r in audit.records()] == ["r1", "r2", "r3"]
    assert audit.verify().ok


def test_service_cache_hits_metrics_promotion_and_settings(served, tmp_path: Path) -> None:
    state = served["app"].state.serving
    assert state.batcher.cache is not None  # on by default
    p = patient_json(served["data"], 2)
    renamed = copy.deepcopy(p)
    renamed["patient_id"] = "another-id"  # same values: the same entry
    before = call(served, "GET", "/metrics", "admin").text
    answers = [call(served, "POST", "/v1/predict", "researcher", json=body).json()
               for body in (p, renamed)]
    assert answers[0]["prediction"]["probabilities"] == answers[1]["prediction"]["probabilities"]
    assert answers[1]["prediction"]["patient_id"] == "another-id"
    after = call(served, "GET", "/metrics", "admin").text
    name = "cancer_alpha_prediction_cache_lookups_total"
    assert _metric(after, name, result="miss") - _metric(before, name, result="miss") == 1
    assert _metric(after, name, result="hit") - _metric(before, name, result="hit") == 1
    # No patient value or id in what the cache holds.
    held = json.dumps(list(state.batcher.cache._entries))
    assert "another-id" not in held and all(
        repr(v) not in held for values in p["modalities"].values() for v in values.values())
    assert served["ref"] in held

    # A new production model empties the cache.
    assert len(state.batcher.cache) == 1
    r = call(served, "POST", f"/v1/models/{served['ref']}/promote", "admin",
             json={"stage": "production"})
    assert r.status_code == 200 and len(state.batcher.cache) == 0

    # Off, and a bad size, through the settings.
    from server.serving.app import create_app

    off = create_app(make_settings(tmp_path / "off", model=str(served["run"]),
                                   prediction_cache=False))
    assert off.state.serving.batcher.cache is None
    with pytest.raises(SettingsError, match="prediction_cache_size"):
        make_settings(tmp_path, prediction_cache_size=0)


def test_cache_settings_from_the_environment(tmp_path: Path) -> None:
    from server.serving.settings import ServingSettings

    s: Any = ServingSettings.load(env={"CANCER_ALPHA_SERVE_PREDICTION_CACHE": "false",
                                       "CANCER_ALPHA_SERVE_PREDICTION_CACHE_SIZE": "12"})
    assert (s.prediction_cache, s.prediction_cache_size) == (False, 12)


def test_database_outage_is_a_503_and_the_service_recovers_without_restart(served) -> None:
    """While the registry database is unusable, requests that need it (every prediction
    is audited) get 503 with Retry-After, not 500; once it is back they succeed again."""
    tmp_path = Path(served["settings"].database_url.removeprefix("sqlite:///")).parent
    state = served["app"].state.serving
    p = patient_json(served["data"], 1)
    assert call(served, "POST", "/v1/predict", "researcher", json=p).status_code == 200
    records = len(state.audit.records())
    database = tmp_path / "serving.db"
    away = tmp_path / "away"
    away.mkdir()

    def move(src: Path, dst: Path) -> None:
        state.engine.dispose()  # pooled connections hold the old file open
        for suffix in ("", "-wal", "-shm"):
            found = src.parent / (src.name + suffix)
            if found.exists():
                found.replace(dst.parent / (dst.name + suffix))

    before = call(served, "GET", "/metrics", "admin").text
    move(database, away / "serving.db")  # the next connection finds an empty database
    for body in (p, patient_json(served["data"], 4)):  # a cached patient, and a new one
        r = call(served, "POST", "/v1/predict", "researcher", json=body)
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "5" and "database" in r.json()["detail"]

    (tmp_path / "serving.db").unlink()
    move(away / "serving.db", database)  # the database is back
    r = call(served, "POST", "/v1/predict", "researcher", json=p)
    assert r.status_code == 200, r.text
    assert call(served, "GET", "/readyz", None).status_code == 200
    assert len(state.audit.records()) == records + 1 and state.audit.verify().ok
    after = call(served, "GET", "/metrics", "admin").text
    labels = {"route": "/v1/predict", "kind": "unavailable"}
    assert (_metric(after, "cancer_alpha_errors_total", **labels)
            - _metric(before, "cancer_alpha_errors_total", **labels)) == 2
