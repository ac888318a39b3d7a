"""The inference service with requests lacking some features of a modality: masked when
the served model reads feature masks (up to half of a modality), refused otherwise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_serving_helpers import make_data, make_settings, patient_json, tokens

from common.config import ModelConfig
from common.dataset.multiomics import MultiOmicsData

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CFG = ModelConfig(d_model=16, n_heads=2, n_layers=1, tokens_per_modality=2)


def bundle_run(directory: Path, *, with_absence: bool) -> Path:
    """A run directory whose bundle has learned absent-feature embeddings, or (an older
    bundle) none at all."""
    from common.bundle import save_bundle, write_json
    from common.model import ModelSpec, build_model
    from common.preprocessing import Standardizer

    data = make_data(seed=3)
    torch.manual_seed(0)
    model = build_model(ModelSpec.for_schema(CFG, data.schema))
    state = model.state_dict()
    if with_absence:
        state = {k: torch.randn_like(v) if k.startswith("absent") else v
                 for k, v in state.items()}
    else:
        state = {k: v for k, v in state.items() if not k.startswith("absent")}
    save_bundle(directory / "model", model_config=CFG, schema=data.schema,
                standardizer=Standardizer.fit(data), state_dict=state,
                lineage={"run_id": "run-mask"})
    write_json(directory / "config.json", {"run_id": "run-mask", "run_config": {"dp": "none"}})
    write_json(directory / "metrics.json", {})
    return directory


def serve(tmp: Path, *, with_absence: bool) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from common.bundle import load_bundle
    from server.serving.app import create_app

    run = bundle_run(tmp / "run", with_absence=with_absence)
    settings = make_settings(tmp, model=str(run), max_explain_steps=16)
    client = TestClient(create_app(settings))
    token = tokens(settings)["researcher"]
    client.headers["Authorization"] = f"Bearer {token}"
    return {"client": client, "bundle": load_bundle(run / "model"), "data": make_data(n=8,
                                                                                      seed=4)}


@pytest.fixture(scope="module")
def masked(tmp_path_factory) -> dict[str, Any]:
    return serve(tmp_path_factory.mktemp("masked"), with_absence=True)


@pytest.fixture(scope="module")
def older(tmp_path_factory) -> dict[str, Any]:
    return serve(tmp_path_factory.mktemp("older"), with_absence=False)


def without(body: dict[str, Any], modality: str, features: list[str]) -> dict[str, Any]:
    values = {f: v for f, v in body["modalities"][modality].items() if f not in features}
    return {**body, "modalities": {**body["modalities"], modality: values}}


def lacking(data: MultiOmicsData, i: int, modality: str, features: list[str]
            ) -> MultiOmicsData:
    """Patient ``i`` with ``features`` of ``modality`` marked unmeasured (values 0)."""
    one = data.subset([i])
    have = {m: np.ones(x.shape, dtype=bool) for m, x in one.features.items()}
    cols = [one.schema.features(modality).index(f) for f in features]
    have[modality][:, cols] = False
    one.features[modality][:, cols] = 0.0
    return MultiOmicsData(one.patient_ids, one.features, one.mask, one.labels, one.schema,
                          feature_mask=have)


def test_missing_features_are_masked_like_a_site_lacking_them(masked) -> None:
    data, bundle, client = masked["data"], masked["bundle"], masked["client"]
    gone = ["rna_1", "rna_4", "rna_5"]  # 3 of 6: the most a request may leave out
    body = without(patient_json(data, 0), "rna", gone)
    r = client.post("/v1/predict", json=body)
    assert r.status_code == 200, r.text
    got = [r.json()["prediction"]["probabilities"][k] for k in bundle.schema.label_names]
    want = bundle.predict_proba(lacking(data, 0, "rna", gone))[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    full = client.post("/v1/predict", json=patient_json(data, 0)).json()["prediction"]
    assert not np.allclose(got, [full["probabilities"][k] for k in bundle.schema.label_names],
                           atol=1e-4)
    # Full and partial patients share a batch.
    r = client.post("/v1/predict/batch", json={"patients": [body, patient_json(data, 0)]})
    assert r.status_code == 200, r.text
    probs = [[p["probabilities"][k] for k in bundle.schema.label_names]
             for p in r.json()["predictions"]]
    np.testing.assert_allclose(probs[0], want, rtol=1e-5, atol=1e-6)


def test_more_than_half_missing_or_unknown_names_are_refused(masked) -> None:
    client, data = masked["client"], masked["data"]
    r = client.post("/v1/predict", json=without(patient_json(data, 0), "rna",
                                                ["rna_0", "rna_1", "rna_2", "rna_3"]))
    assert r.status_code == 422
    error = r.json()["detail"][0]
    assert error["loc"] == ["body", "modalities", "rna"]
    assert "modality 'rna': 4 of 6 features are missing" in error["msg"]
    assert "at most 3" in error["msg"]
    body = without(patient_json(data, 0), "rna", ["rna_0"])
    body["modalities"]["rna"]["TP53"] = 1.0
    r = client.post("/v1/predict", json=body)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "modalities", "rna", "TP53"]
    assert "unknown feature 'TP53'" in r.json()["detail"][0]["msg"]


def test_explaining_a_patient_with_missing_features_ranks_only_sent_ones(masked) -> None:
    body = without(patient_json(masked["data"], 1), "rna", ["rna_2"])
    r = masked["client"].post("/v1/explain", json={**body, "top_k": 20, "steps": 8})
    assert r.status_code == 200, r.text
    ranked = [(f["modality"], f["feature"]) for f in r.json()["top_features"]]
    assert ("rna", "rna_2") not in ranked and ("rna", "rna_0") in ranked


def test_an_older_bundle_serves_full_requests_and_refuses_partial_ones(older) -> None:
    data, bundle, client = older["data"], older["bundle"], older["client"]
    r = client.post("/v1/predict", json=patient_json(data, 2))
    assert r.status_code == 200, r.text
    got = [r.json()["prediction"]["probabilities"][k] for k in bundle.schema.label_names]
    np.testing.assert_allclose(got, bundle.predict_proba(data.subset([2]))[0], rtol=1e-5,
                               atol=1e-6)
    r = client.post("/v1/predict", json=without(patient_json(data, 2), "rna", ["rna_3"]))
    assert r.status_code == 422
    assert "1 of 6 features are missing" in r.json()["detail"][0]["msg"]
    assert "send every feature" in r.json()["detail"][0]["msg"]
