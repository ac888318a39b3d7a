"""Property-based fuzz of the API (Hypothesis): whatever a caller sends, the answer is a
2xx or a 4xx with a JSON error naming a location, never a 5xx.

Three generators: arbitrary JSON documents; near-valid patients (real modality and
feature names mixed with wrong ones, values of every JSON type including NaN and
Infinity tokens, huge and tiny numbers); and raw bytes with arbitrary content types.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_serving_helpers import MODALITIES, make_bundle, make_settings, register, tokens

pytestmark = pytest.mark.usefixtures("one_torch_thread")



def fuzz(examples: int) -> Any:
    # derandomize: CI sees the same examples every run (a failure is reproducible).
    return settings(max_examples=examples, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])


PATHS = ["/v1/predict", "/v1/predict/batch", "/v1/explain"]
FEATURES = {m: [f"{m}_{i}" for i in range(k)] for m, k in MODALITIES.items()}


@pytest.fixture(scope="module")
def client(tmp_path_factory, one_torch_thread) -> tuple[TestClient, dict[str, str]]:
    from server.serving.app import create_app

    tmp = tmp_path_factory.mktemp("fuzz")
    settings_ = make_settings(tmp, max_batch=5, max_explain_steps=32)
    register(settings_, make_bundle(tmp / "run"))
    headers = {"Authorization": f"Bearer {tokens(settings_)['researcher']}"}
    return TestClient(create_app(settings_), raise_server_exceptions=False), headers


json_scalars = (st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30)
                | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20))
json_docs = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=25,
)
values = (st.floats(allow_nan=True, allow_infinity=True)
          | st.floats(min_value=-1e6, max_value=1e6)
          | st.sampled_from([0, -1, 1e38, 3.5e38, -1e308, 1e-320, 2**63, -(2**64)])
          | json_scalars | st.lists(st.floats(), max_size=2))


@st.composite
def modality_maps(draw: Any) -> Any:
    """Valid modality maps (complete, finite values) with 0-2 mutations each: a feature
    dropped, an unknown feature added, a value of another kind, or a whole block replaced."""
    out: dict[str, Any] = {}
    names = draw(st.lists(st.sampled_from(list(MODALITIES)), min_size=1, max_size=3,
                          unique=True))
    for m in names:
        out[m] = {f: draw(st.floats(min_value=-100, max_value=100)) for f in FEATURES[m]}
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2]))):
        m = draw(st.sampled_from(names))
        kind = draw(st.sampled_from(["drop", "add", "value", "block", "modality"]))
        if kind == "drop" and isinstance(out[m], dict) and out[m]:
            out[m].pop(draw(st.sampled_from(sorted(out[m]))))
        elif kind == "add" and isinstance(out[m], dict):
            out[m][draw(st.text(max_size=10))] = draw(values)
        elif kind == "value" and isinstance(out[m], dict) and out[m]:
            out[m][draw(st.sampled_from(sorted(out[m])))] = draw(values)
        elif kind == "block":
            out[m] = draw(json_docs)
        else:
            out[draw(st.sampled_from(["proteome", "", "RNA"]))] = draw(json_docs)
    return out


@st.composite
def patients(draw: Any) -> Any:
    body: dict[str, Any] = {"modalities": draw(modality_maps())}
    if draw(st.booleans()):
        body["patient_id"] = draw(json_scalars)
    if draw(st.integers(0, 5)) == 0:
        body[draw(st.sampled_from(["target", "steps", "top_k", "extra"]))] = draw(
            st.integers(-5, 40) | st.sampled_from(["A", "B", "Z"]) | json_scalars)
    return body


def check(response: Any) -> None:
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code >= 400:
        detail = response.json()["detail"]
        if isinstance(detail, list):  # location-naming validation errors
            assert all("loc" in e and "msg" in e for e in detail), detail
    else:
        assert response.status_code == 200
        assert all(math.isfinite(v) for v in _numbers(response.json()))


def _numbers(node: Any) -> list[float]:
    if isinstance(node, dict):
        return [x for v in node.values() for x in _numbers(v)]
    if isinstance(node, list):
        return [x for v in node for x in _numbers(v)]
    return [float(node)] if isinstance(node, int | float) and not isinstance(node, bool) else []


@fuzz(60)
@given(path=st.sampled_from(PATHS), doc=json_docs)
def test_arbitrary_json_never_5xx(client, path: str, doc: Any) -> None:
    c, headers = client
    check(c.post(path, content=json.dumps(doc), headers={**headers,
                                                         "Content-Type": "application/json"}))


@fuzz(150)
@given(path=st.sampled_from(PATHS), body=patients(), n=st.integers(0, 7))
def test_near_valid_patients_never_5xx(client, path: str, body: Any, n: int) -> None:
    c, headers = client
    payload = {"patients": [body] * n} if path.endswith("batch") else body
    check(c.post(path, content=json.dumps(payload), headers={
        **headers, "Content-Type": "application/json"}))


@fuzz(60)
@given(path=st.sampled_from(PATHS), raw=st.binary(max_size=200),
       ctype=st.sampled_from(["application/json", "text/plain", "multipart/form-data",
                              "multipart/form-data; boundary=x", "", "application/x-www-form-"
                              "urlencoded"]))
def test_raw_bodies_never_5xx(client, path: str, raw: bytes, ctype: str) -> None:
    c, headers = client
    check(c.post(path, content=raw, headers={**headers, "Content-Type": ctype}))


@fuzz(60)
@given(files=st.lists(st.tuples(
    st.sampled_from(["rna.csv", "meth.csv", "clin.csv", "labels.csv", "x.csv", "rna.txt"]),
    st.text(alphabet=st.sampled_from(list("rna_0123456789,.-\nPeE abc")), max_size=300)),
    max_size=4))
def test_csv_uploads_never_5xx(client, files: list[tuple[str, str]]) -> None:
    c, headers = client
    parts = [("files", (name, text.encode(), "text/csv")) for name, text in files]
    if not parts:
        parts = [("other", (None, b"field"))]  # a form with no file at all
    check(c.post("/v1/predict/batch", files=parts, headers=headers))
