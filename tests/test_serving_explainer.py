"""Explanations answered from a cache: the same patient, model and parameters give the
same explanation without integrated gradients; every request is still audited; the
cache holds no patient value or id and is emptied by a promotion."""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np
import pytest
from test_serving_helpers import call, patient_json, serve_test_model

from server.serving.explainer import ExplanationCache

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def served(tmp_path_factory, one_torch_thread) -> dict[str, Any]:
    return serve_test_model(tmp_path_factory.mktemp("explainer"))


def _explain(served: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    r = call(served, "POST", "/v1/explain", "researcher", json={**body, "steps": 8, "top_k": 4})
    assert r.status_code == 200, r.text
    return r.json()


def _without_ids(answer: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(answer)
    out.pop("request_id")
    out["prediction"].pop("patient_id")
    return out


def test_a_repeated_explanation_comes_from_the_cache_and_is_audited(served) -> None:
    state = served["app"].state.serving
    cache = state.explainer.cache
    assert cache is not None  # on with the prediction cache
    cache.clear()
    audited = sum(r.action == "explain" for r in state.audit.records())
    p = patient_json(served["data"], 3)
    first = _explain(served, p)
    renamed = {**copy.deepcopy(p), "patient_id": "someone-else"}
    second = _explain(served, renamed)
    assert (cache.misses, cache.hits) == (1, 1)
    assert _without_ids(second) == _without_ids(first)
    assert second["prediction"]["patient_id"] == "someone-else"
    for f in second["top_features"]:  # the values shown are the ones sent
        assert f["value"] == pytest.approx(p["modalities"][f["modality"]][f["feature"]],
                                           rel=1e-6)
    assert sum(r.action == "explain" for r in state.audit.records()) == audited + 2
    assert state.audit.verify().ok

    # Another value of a top feature, another class or other steps: computed afresh.
    top = first["top_features"][0]
    changed = copy.deepcopy(p)
    changed["modalities"][top["modality"]][top["feature"]] += 1.0
    third = _explain(served, changed)
    other = next(k for k in served["bundle"].schema.label_names if k != first["target"])
    fourth = _explain(served, {**p, "target": other})
    assert cache.misses == 3 and third["top_features"] != first["top_features"]
    assert fourth["target"] == other
    moved = next(f for f in third["top_features"] if f["feature"] == top["feature"])
    assert moved["value"] == pytest.approx(top["value"] + 1.0, rel=1e-6)

    # No patient value or id in what the cache holds: keys are digests, entries carry
    # attributions with the raw values left out.
    held = json.dumps([[k, repr(v.explanation)] for k, v in cache._entries.items()])
    assert "someone-else" not in held
    assert all(repr(f["value"]) not in held for f in first["top_features"])
    assert all(np.isnan(f.value) for v in cache._entries.values()
               for f in v.explanation.top_features)

    r = call(served, "POST", f"/v1/models/{served['ref']}/promote", "admin",
             json={"stage": "production"})
    assert r.status_code == 200 and len(cache) == 0


def test_explanation_cache_keys_and_lru() -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    mask = np.ones((2, 2), dtype=bool)
    key = ExplanationCache.key("m:1", x[0], mask[0], None, 16, 10)
    assert key.startswith("m:1:")
    others = {ExplanationCache.key("m:2", x[0], mask[0], None, 16, 10),
              ExplanationCache.key("m:1", x[1], mask[0], None, 16, 10),
              ExplanationCache.key("m:1", x[0], mask[0], "Basal-like", 16, 10),
              ExplanationCache.key("m:1", x[0], mask[0], None, 32, 10),
              ExplanationCache.key("m:1", x[0], mask[0], None, 16, 5)}
    assert key not in others and len(others) == 5
    cache = ExplanationCache(1)
    cache.put("a", "first")  # type: ignore[arg-type]
    cache.put("b", "second")  # type: ignore[arg-type]
    assert cache.get("a") is None and cache.get("b") == "second" and len(cache) == 1
    with pytest.raises(ValueError):
        ExplanationCache(0)
