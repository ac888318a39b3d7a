"""Dynamic batching: concurrent requests share forward passes, each gets its own rows and
its own audit record, and an audit failure fails the requests instead of losing records."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest
from test_serving_helpers import make_bundle, make_data, make_settings

from server.serving.audit_log import AuditLog, entry
from server.serving.batching import MicroBatcher
from server.serving.database import open_database
from server.serving.predictor import Predictor, ServedModel

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def parts(tmp_path: Path):
    from common.bundle import load_bundle

    bundle = load_bundle(make_bundle(tmp_path / "run"))
    predictor = Predictor(bundle, ServedModel("m:1", "m", 1, "production", ""))
    _, sessions = open_database(make_settings(tmp_path).database_url)
    return bundle, predictor, AuditLog(sessions)


def test_concurrent_requests_are_batched_and_answered_in_order(parts) -> None:
    bundle, predictor, audit = parts
    data = make_data(n=30, seed=7)
    x, mask = predictor.prepare_data(data)
    batcher = MicroBatcher(predictor, audit, max_rows=8)

    # Requests of 1, 2, 3, 1, 2, 3, ... patients (19 in all), all in flight at once: the
    # inference thread is held busy until every one is queued.
    slices = [slice(i, i + 1 + (i // 3) % 3) for i in range(0, 30, 3)]
    busy = threading.Event()

    async def main() -> list[np.ndarray]:
        batcher._executor.submit(busy.wait)
        tasks = [asyncio.ensure_future(batcher.run(
            x[sl], mask[sl], entry(actor=f"u{k}", role="researcher", action="predict",
                                   request_id=f"r{k}"))) for k, sl in enumerate(slices)]
        await asyncio.sleep(0)
        busy.set()
        return list(await asyncio.gather(*tasks))

    results = asyncio.run(main())
    batcher.close()
    want = bundle.predict_proba(data)
    for got, sl in zip(results, slices, strict=True):
        np.testing.assert_allclose(got, want[sl], rtol=1e-5, atol=1e-6)
    # 1+2+3+1 | 2+3+1+2 | 3+1: at most 8 patients per forward pass, in arrival order ...
    assert batcher.batches == 3
    records = audit.records()
    assert [r.request_id for r in records] == [f"r{k}" for k in range(len(slices))]
    assert audit.verify().ok  # ... and each has its own record in one unbroken chain


def test_audit_failure_fails_the_requests(parts, monkeypatch) -> None:
    _, predictor, audit = parts
    x, mask = predictor.prepare_data(make_data(n=4, seed=1))
    batcher = MicroBatcher(predictor, audit)

    def broken(entries):
        raise RuntimeError("database is gone")

    monkeypatch.setattr(audit, "append_many", broken)

    async def main() -> list:
        return await asyncio.gather(
            *(batcher.run(x[i:i + 1], mask[i:i + 1], entry(actor="u", role="researcher",
                                                           action="predict"))
              for i in range(4)), return_exceptions=True)

    outcomes = asyncio.run(main())
    batcher.close()
    assert all(isinstance(o, RuntimeError) and "database is gone" in str(o) for o in outcomes)
