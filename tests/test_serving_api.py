"""The serving API in-process (FastAPI TestClient): predictions, validation, explanations,
registry endpoints, metrics, audit records, OpenAPI. Who may call what is in
``test_serving_auth.py``."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from test_serving_helpers import (
    ENDPOINTS,
    call,
    create_app_for,
    make_bundle,
    make_data,
    make_settings,
    patient_json,
    serve_test_model,
)

from server.serving.registry import Actor

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def served(tmp_path_factory, one_torch_thread) -> dict[str, Any]:
    return serve_test_model(tmp_path_factory.mktemp("api"))


# ------------------------------------------------------------------------------ predict
def test_predictions_equal_the_bundle(served) -> None:
    data, bundle = served["data"], served["bundle"]
    want = bundle.predict_proba(data)
    labels = bundle.schema.label_names
    for i in range(12):
        r = call(served, "POST", "/v1/predict", "researcher", json=patient_json(data, i))
        assert r.status_code == 200, r.text
        body = r.json()
        pred = body["prediction"]
        got = [pred["probabilities"][k] for k in labels]
        np.testing.assert_allclose(got, want[i], rtol=1e-5, atol=1e-6)
        assert pred["label"] == labels[int(np.argmax(want[i]))]
        assert pred["patient_id"] == data.patient_ids[i]
        present = [m for j, m in enumerate(data.modality_names) if data.mask[i, j]]
        assert pred["modalities_used"] == present
        assert pred["modalities_missing"] == [m for m in data.modality_names if m not in present]
        assert body["model"]["model_id"] == served["ref"]
        assert body["model"]["stage"] == "production"
    assert not data.mask.all()  # the loop covered patients lacking a modality


def test_batch_json_and_csv_upload(served) -> None:
    data, bundle = served["data"], served["bundle"]
    rows = list(range(8))
    want = bundle.predict_proba(data.subset(rows))
    r = call(served, "POST", "/v1/predict/batch", "researcher",
             json={"patients": [patient_json(data, i) for i in rows]})
    assert r.status_code == 200, r.text
    got = [[p["probabilities"][k] for k in bundle.schema.label_names]
           for p in r.json()["predictions"]]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    files = []  # the dataset format: one <modality>.csv, patient id first, empty = absent
    for j, m in enumerate(data.modality_names):
        frame = pd.DataFrame(data.features[m][rows], index=data.patient_ids[rows],
                             columns=list(data.schema.features(m)))
        frame[~data.mask[rows, j]] = np.nan
        frame.index.name = "patient_id"
        files.append(("files", (f"{m}.csv", frame.to_csv().encode(), "text/csv")))
    r = call(served, "POST", "/v1/predict/batch", "researcher", files=files)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert [p["patient_id"] for p in preds] == list(data.patient_ids[rows])
    got = [[p["probabilities"][k] for k in bundle.schema.label_names] for p in preds]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    broken = pd.DataFrame(data.features["rna"][rows], index=data.patient_ids[rows],
                          columns=list(data.schema.features("rna"))).astype(object)
    broken.iloc[2, 1] = "abc"
    bad = [("files", ("rna.csv", broken.to_csv(index_label="patient_id").encode(),
                      "text/csv"))]
    r = call(served, "POST", "/v1/predict/batch", "researcher", files=bad)
    assert r.status_code == 422
    assert any("rna.csv" in e["loc"] and "rna_1" in e["loc"] for e in r.json()["detail"])
    r = call(served, "POST", "/v1/predict/batch", "researcher",
             files=[("files", ("../../etc/passwd", b"x", "text/plain"))])
    assert r.status_code == 422 and "file names" in r.json()["detail"][0]["msg"]


def test_oversized_batch_and_body(served, tmp_path) -> None:
    p = patient_json(served["data"], 0)
    r = call(served, "POST", "/v1/predict/batch", "researcher", json={"patients": [p] * 9})
    assert r.status_code == 413
    assert r.json()["detail"][0]["loc"] == ["body", "patients"]
    assert "at most 8" in r.json()["detail"][0]["msg"]

    small = create_app_for(tmp_path, served, max_body_bytes=200)
    client = TestClient(small)
    headers = {"Authorization": f"Bearer {served['tokens']['researcher']}"}
    r = client.post("/v1/predict", json=p, headers=headers)
    assert r.status_code == 413 and "exceeds 200 bytes" in r.json()["detail"][0]["msg"]

    def chunks():  # no Content-Length: the limit applies while reading
        yield json.dumps(p).encode()

    r = client.post("/v1/predict", content=chunks(),
                    headers={**headers, "Content-Type": "application/json"})
    assert r.status_code == 413


def bad_inputs(data) -> list[tuple[str, Any, list]]:
    """(case, body, expected error location)."""
    p = patient_json(data, 0)
    rna = p["modalities"]["rna"]
    cases: list[tuple[str, Any, list]] = [
        ("unknown feature", {"modalities": {"rna": {**rna, "TP53": 1.0}}},
         ["body", "modalities", "rna", "TP53"]),
        ("unknown modality", {"modalities": {**p["modalities"], "proteome": {"x": 1.0}}},
         ["body", "modalities", "proteome"]),
        ("most features missing", {"modalities": {"rna": dict(list(rna.items())[:2])}},
         ["body", "modalities", "rna"]),
        ("no modality", {"modalities": {}}, ["body", "modalities"]),
        ("no modalities field", {"patient_id": "x"}, ["body", "modalities"]),
        ("string value", {"modalities": {"rna": {**rna, "rna_1": "7.5"}}},
         ["body", "modalities", "rna", "rna_1"]),
        ("boolean value", {"modalities": {"rna": {**rna, "rna_1": True}}},
         ["body", "modalities", "rna", "rna_1"]),
        ("null value", {"modalities": {"rna": {**rna, "rna_1": None}}},
         ["body", "modalities", "rna", "rna_1"]),
        ("modality not an object", {"modalities": {"rna": [1, 2, 3]}},
         ["body", "modalities", "rna"]),
        ("misspelt field", {**p, "modality": {}}, ["body", "modality"]),
        ("float32 overflow", {"modalities": {"rna": {**rna, "rna_0": 1e300}}},
         ["body", "modalities", "rna", "rna_0"]),
        ("far outside training range", {"modalities": {"rna": {**rna, "rna_3": 1e30}}},
         ["body", "modalities", "rna", "rna_3"]),
    ]
    return cases


@pytest.mark.parametrize("case", [c for c, _, _ in bad_inputs(make_data(n=40, seed=5))])
def test_bad_input_is_a_422_naming_the_field(served, case: str) -> None:
    _, body, loc = next(c for c in bad_inputs(served["data"]) if c[0] == case)
    r = call(served, "POST", "/v1/predict", "researcher", json=body)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert any(e["loc"][:len(loc)] == loc for e in detail), detail
    assert all(set(e) == {"loc", "msg", "type"} for e in detail)  # values are never echoed


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_a_422_not_a_500(served, token: str) -> None:
    p = patient_json(served["data"], 0)
    text = json.dumps(p).replace(repr(p["modalities"]["rna"]["rna_4"]), token, 1)
    r = call(served, "POST", "/v1/predict", "researcher", content=text,
             headers={"Content-Type": "application/json"})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "modalities", "rna", "rna_4"]
    r = call(served, "POST", "/v1/predict/batch", "researcher",
             content='{"patients": [' + text + "]}", headers={"Content-Type":
                                                              "application/json"})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "patients", 0, "modalities", "rna", "rna_4"]


def test_required_modalities_and_batch_locations(served) -> None:
    from server.serving.predictor import InputError, Predictor

    pred = Predictor(served["bundle"], served["app"].state.serving.predictor.identity,
                     required_modalities=["meth"], torchscript=False)
    p = patient_json(served["data"], 0)
    with pytest.raises(InputError) as err:
        pred.predict([{"rna": p["modalities"]["rna"]}])
    assert err.value.errors[0]["loc"] == ["body", "modalities"]
    assert "'meth' is required" in err.value.errors[0]["msg"]
    with pytest.raises(ValueError, match="not in the model's schema"):
        Predictor(served["bundle"], pred.identity, required_modalities=["proteome"])
    r = call(served, "POST", "/v1/predict/batch", "researcher", json={"patients": [
        p, {"modalities": {"rna": {"zzz": 1.0}}}]})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "patients", 1, "modalities", "rna", "zzz"]


# ------------------------------------------------------------------------------ explain
def test_explanation_is_complete_and_consistent(served) -> None:
    data = served["data"]
    i = int(np.flatnonzero(~data.mask.all(axis=1))[0])  # a patient lacking a modality
    r = call(served, "POST", "/v1/explain", "researcher",
             json={**patient_json(data, i), "steps": 64, "top_k": 5})
    assert r.status_code == 200, r.text
    e = r.json()
    present = e["prediction"]["modalities_used"]
    assert [m["modality"] for m in e["modalities"]] == present
    assert e["target"] == e["prediction"]["label"]
    assert e["target_probability"] == pytest.approx(
        e["prediction"]["probabilities"][e["target"]], abs=1e-6)
    total = sum(m["attribution"] for m in e["modalities"])
    # Completeness of integrated gradients: attributions add up to p(x) - p(baseline).
    assert total == pytest.approx(e["target_probability"] - e["baseline_probability"],
                                  abs=e["convergence_delta"] + 1e-6)
    assert e["convergence_delta"] < 0.05
    assert sum(m["share"] for m in e["modalities"]) == pytest.approx(1.0)
    assert sum(m["fusion_weight"] for m in e["modalities"]) == pytest.approx(1.0, abs=1e-5)
    assert len(e["top_features"]) == 5
    mags = [abs(f["attribution"]) for f in e["top_features"]]
    assert mags == sorted(mags, reverse=True)
    assert {f["modality"] for f in e["top_features"]} <= set(present)
    learned = e["learned_modality_weights"]
    assert set(learned) == set(data.modality_names) and len(set(learned.values())) > 1

    other = next(k for k in served["bundle"].schema.label_names if k != e["target"])
    r2 = call(served, "POST", "/v1/explain", "researcher",
              json={**patient_json(data, i), "target": other, "steps": 16})
    assert r2.status_code == 200 and r2.json()["target"] == other
    for body, loc in (({"target": "Z"}, ["body", "target"]), ({"steps": 65}, ["body", "steps"]),
                      ({"steps": 2}, ["body", "steps"]), ({"top_k": 0}, ["body", "top_k"])):
        r3 = call(served, "POST", "/v1/explain", "researcher",
                  json={**patient_json(data, i), **body})
        assert r3.status_code == 422 and r3.json()["detail"][0]["loc"] == loc


# ------------------------------------------------------------------- registry over HTTP
def test_models_promotion_and_tokens_are_audited(served, tmp_path) -> None:
    state = served["app"].state.serving
    second = state.registry.add(make_bundle(tmp_path / "run2", seed=1), name="cancer-alpha",
                                actor=Actor("t", "admin"))
    r = call(served, "GET", "/v1/models", "lead")
    body = r.json()
    assert body["serving"] == served["ref"]
    by_id = {m["model_id"]: m for m in body["models"]}
    assert by_id[served["ref"]]["serving"] and not by_id[second.ref]["serving"]
    assert by_id[second.ref]["per_site_epsilon"] == {"site-a": 2.5, "site-b": 3.0}
    assert "bundle_path" not in by_id[second.ref]
    assert call(served, "GET", "/v1/models/nope:3", "lead").status_code == 404

    r = call(served, "POST", f"/v1/models/{second.ref}/promote", "lead",
             json={"stage": "production"}, headers={"X-Request-ID": "promo-1"})
    assert r.status_code == 200 and r.json()["stage"] == "production"
    assert r.headers["x-request-id"] == "promo-1"
    rec = state.audit.records()[-1]
    assert (rec.action, rec.actor, rec.role, rec.model_id, rec.request_id) == (
        "registry.promote", "user-lead", "lead", second.ref, "promo-1")
    assert call(served, "POST", "/v1/models/nope:3/promote", "admin",
                json={}).status_code == 404
    # put the fixture's model back in production for the other tests
    call(served, "POST", f"/v1/models/{served['ref']}/promote", "admin", json={})

    r = call(served, "POST", "/v1/tokens", "admin",
             json={"subject": "dr-who", "role": "researcher", "ttl_seconds": 120})
    assert r.status_code == 200 and r.json()["expires_in"] == 120
    new = r.json()["token"]
    ok = served["client"].get("/v1/schema", headers={"Authorization": f"Bearer {new}"})
    assert ok.status_code == 200
    rec = state.audit.records()[-1]
    assert rec.action == "auth.issue_token" and new not in rec.detail
    assert state.audit.verify().ok


def test_audit_records_predictions_without_patient_values(served) -> None:
    state = served["app"].state.serving
    p = patient_json(served["data"], 3)
    r = call(served, "POST", "/v1/predict", "researcher", json=p,
             headers={"X-Request-ID": "trace-77"})
    assert r.status_code == 200 and r.json()["request_id"] == "trace-77"
    rec = state.audit.records()[-1]
    assert (rec.action, rec.actor, rec.role, rec.model_id, rec.request_id) == (
        "predict", "user-researcher", "researcher", served["ref"], "trace-77")
    stored = json.dumps(rec.as_dict())
    assert p["patient_id"] not in stored
    for values in p["modalities"].values():
        for v in values.values():
            assert repr(v) not in stored
    r = call(served, "POST", "/v1/predict", "researcher", json=p,
             headers={"X-Request-ID": "bad id with spaces"})
    assert re.fullmatch(r"[0-9a-f]{32}", r.json()["request_id"])  # replaced, not trusted


# --------------------------------------------------------------------- metrics & openapi
def test_metrics_count_requests_predictions_errors(served) -> None:
    def value(text: str, name: str, **labels: str) -> float:
        for line in text.splitlines():
            if line.startswith(name + "{") and all(f'{k}="{v}"' in line
                                                  for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = call(served, "GET", "/metrics", "admin").text
    p = patient_json(served["data"], 0)
    label = call(served, "POST", "/v1/predict", "researcher", json=p).json()["prediction"][
        "label"]
    call(served, "POST", "/v1/predict", "researcher", json={"modalities": {}})
    call(served, "POST", "/v1/predict", None, json=p)
    after = call(served, "GET", "/metrics", "lead").text
    route = "/v1/predict"
    for name, labels, delta in [
        ("cancer_alpha_http_requests_total", {"route": route, "status": "200"}, 1),
        ("cancer_alpha_http_requests_total", {"route": route, "status": "422"}, 1),
        ("cancer_alpha_predictions_total", {"label": label}, 1),
        ("cancer_alpha_errors_total", {"route": route, "kind": "validation"}, 1),
        ("cancer_alpha_errors_total", {"route": route, "kind": "auth"}, 1),
        ("cancer_alpha_http_request_duration_seconds_count", {"route": route}, 3),
    ]:
        assert value(after, name, **labels) - value(before, name, **labels) == delta, name
    assert 'cancer_alpha_http_request_duration_seconds_bucket{le="0.005"' in after
    assert f'cancer_alpha_model_info{{model_id="{served["ref"]}"' in after


def test_openapi_schema_is_complete(served) -> None:
    spec = served["client"].get("/openapi.json").json()
    assert {p for p in spec["paths"]} == {p for _, p, _ in ENDPOINTS}
    schemas = spec["components"]["schemas"]
    for name in ("PatientInput", "PredictRequest", "BatchPredictRequest", "ExplainRequest",
                 "PredictResponse", "BatchPredictResponse", "ExplainResponse", "ErrorResponse",
                 "ModelsResponse", "TokenRequest"):
        assert name in schemas, name
    batch = spec["paths"]["/v1/predict/batch"]["post"]["requestBody"]["content"]
    assert set(batch) == {"application/json", "multipart/form-data"}
    ref = batch["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert ref in schemas
    predict = spec["paths"]["/v1/predict"]["post"]["responses"]
    assert {"200", "401", "403", "413", "422"} <= set(predict)
    assert not any(v is None for v in _walk_refs(spec, schemas))


def _walk_refs(node: Any, schemas: dict) -> list:
    """Every $ref target (None when dangling)."""
    found = []
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            found.append(schemas.get(ref.rsplit("/", 1)[1]))
        for v in node.values():
            found += _walk_refs(v, schemas)
    elif isinstance(node, list):
        for v in node:
            found += _walk_refs(v, schemas)
    return found


def test_model_from_a_path_and_a_missing_production_model(served, tmp_path: Path) -> None:
    from server.serving.app import create_app
    from server.serving.registry import RegistryError

    app = create_app_for(tmp_path, served)
    info = TestClient(app).get("/readyz").json()
    assert info["status"] == "ready" and info["model_id"].startswith("bundle:")
    with pytest.raises(RegistryError, match="no production model"):
        create_app(make_settings(tmp_path / "empty", model="production"))


def test_csv_io_helper_is_the_dataset_format(served) -> None:
    """The CSV upload goes through the project's dataset loader: a file the loader rejects
    (duplicate patient id) is a 422 naming the file."""
    data = served["data"]
    frame = pd.DataFrame(data.features["rna"][:3], index=["a", "a", "b"],
                         columns=list(data.schema.features("rna")))
    buf = io.StringIO()
    frame.to_csv(buf, index_label="patient_id")
    r = call(served, "POST", "/v1/predict/batch", "researcher",
             files=[("files", ("rna.csv", buf.getvalue().encode(), "text/csv"))])
    assert r.status_code == 422
    assert any("rna.csv" in e["loc"] for e in r.json()["detail"])
