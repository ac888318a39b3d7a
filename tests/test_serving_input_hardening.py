"""What the API accepts as a request body, and what its errors show.

* every ``/v1/`` POST must say it sends JSON (or, for the batch endpoint, a multipart
  upload): ``text/plain`` or no content type is 415, before anything is read;
* duplicate keys anywhere in a JSON body are refused (422 naming the key), not
  silently resolved to the last value;
* a batch with more patients than allowed is refused (413) without being parsed;
* messages about an upload name the sender's file, never the server's temporary
  directory, and values without NumPy reprs.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from server.serving import schemas as s
from server.serving.api.bodies import parse_json_body
from server.serving.api.middleware import ObserveMiddleware
from server.serving.api.uploads import client_text
from server.serving.predictor import InputError
from server.serving.prometheus import ServingMetrics


@pytest.fixture(scope="module")
def client() -> TestClient:
    async def ok(_request):
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route(p, ok, methods=["GET", "POST", "DELETE"]) for p in
                            ("/v1/predict", "/v1/predict/batch", "/v1/tokens/x", "/healthz")])
    return TestClient(ObserveMiddleware(app, metrics=ServingMetrics(),
                                        max_body_bytes=1 << 20))


@pytest.mark.parametrize("path, content_type, status", [
    ("/v1/predict", "text/plain", 415),
    ("/v1/predict", None, 415),
    ("/v1/predict", "application/x-www-form-urlencoded", 415),
    ("/v1/predict", "multipart/form-data; boundary=x", 415),
    ("/v1/predict", "application/json", 200),
    ("/v1/predict", "application/json; charset=utf-8", 200),
    ("/v1/predict/batch", "multipart/form-data; boundary=x", 200),
    ("/v1/predict/batch", "text/csv", 415),
])
def test_bodies_must_say_they_are_json(client, path, content_type, status):
    headers = {"content-type": content_type} if content_type else {}
    r = client.post(path, content=b"{}", headers=headers)
    assert r.status_code == status, r.text
    if status == 415:
        assert r.json()["detail"][0]["loc"] == ["header", "content-type"]


def test_requests_without_a_body_are_not_affected(client):
    assert client.get("/healthz").status_code == 200
    assert client.delete("/v1/tokens/x").status_code == 200


def _request(body: bytes) -> Request:
    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    return Request({"type": "http", "method": "POST", "path": "/v1/predict", "headers": [
        (b"content-type", b"application/json")]}, receive)


def _parse(model, body, **kw):
    return asyncio.run(parse_json_body(model, _request(body), **kw))


@pytest.mark.parametrize("body, key", [
    (b'{"modalities": {"mrna": {"A": 1, "B": 2, "A": 3}}}', "A"),
    (b'{"modalities": {"mrna": {"A": 1}, "mrna": {"A": 2}}}', "mrna"),
    (b'{"patient_id": "p", "patient_id": "q", "modalities": {"mrna": {"A": 1}}}',
     "patient_id"),
])
def test_duplicate_keys_are_refused(body, key):
    with pytest.raises(InputError) as caught:
        _parse(s.PredictRequest, body)
    assert caught.value.status_code == 422 and repr(key) in caught.value.errors[0]["msg"]


def test_unusual_spacing_and_quoted_colons_are_still_accepted():
    body = b'{"patient_id" :\n "a\\":b", "modalities"\t: {"mrna": {"A":1,"B" : 2}}}'
    parsed = _parse(s.PredictRequest, body)
    assert parsed.patient_id == 'a":b' and parsed.modalities == {"mrna": {"A": 1, "B": 2}}


def test_a_batch_over_the_limit_is_refused_before_parsing(monkeypatch):
    patient = {"modalities": {"mrna": {f"G{i}": 1.0 for i in range(2000)}}}
    body = json.dumps({"patients": [patient] * 300}).encode()
    assert len(body) > 5_000_000

    def never(*_a, **_k):
        raise AssertionError("parsed a body it should have refused unread")

    monkeypatch.setattr(s.BatchPredictRequest, "model_validate_json", never)
    with pytest.raises(InputError) as caught:
        _parse(s.BatchPredictRequest, body, max_patients=256)
    assert caught.value.status_code == 413
    assert "300 patients" in caught.value.errors[0]["msg"]


def test_upload_messages_hide_server_paths_and_numpy_reprs():
    tmp = "/tmp/cancer-alpha-upload-abc123"
    text = (f"{tmp}/mrna.csv row 3: patient np.str_('TCGA-A1-0001') has value "
            f"np.float64(nan) in {tmp}")
    clean = client_text(text, tmp)
    assert clean == "mrna.csv row 3: patient 'TCGA-A1-0001' has value nan in upload"
    assert "/tmp" not in clean and "np." not in clean
