"""Shared helpers of the serving tests (``test_serving_*.py`` import them), plus tests of
the serving settings.

The tiny bundle is a real model bundle (``common.bundle.save_bundle``) of a small network
on synthetic data: fast to load, and its predictions come from the same code path as
a trained model's.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from common.config import ModelConfig
from common.dataset.multiomics import MultiOmicsData
from common.schema import FeatureSchema

MODALITIES = {"rna": 6, "meth": 4, "clin": 3}
LABELS = ["A", "B", "C"]
# A fresh secret per test session: keys are never hard-coded, not even in tests.
SECRET = secrets.token_urlsafe(48)


def make_data(n: int = 40, seed: int = 0) -> MultiOmicsData:
    """Raw data with feature-specific offsets and scales; some patients lack a modality."""
    rng = np.random.default_rng(seed)
    schema = FeatureSchema.build(
        {m: [f"{m}_{i}" for i in range(k)] for m, k in MODALITIES.items()}, LABELS)
    mask = rng.random((n, len(MODALITIES))) >= 0.25
    mask[:, 0] = True
    features = {}
    for j, (m, k) in enumerate(MODALITIES.items()):
        x = rng.normal(rng.uniform(-50, 50, k), rng.uniform(0.5, 20, k), size=(n, k))
        x[~mask[:, j]] = 0.0
        features[m] = x.astype(np.float32)
    labels = rng.integers(0, len(LABELS), n).astype(np.int64)
    return MultiOmicsData(np.array([f"P{seed}-{i:03d}" for i in range(n)]), features, mask,
                          labels, schema)


def make_bundle(directory: Path, seed: int = 0) -> Path:
    """Write a run directory (``model/`` bundle + config.json + metrics.json)."""
    import torch

    from common.bundle import save_bundle, write_json
    from common.model import ModelSpec, build_model
    from common.preprocessing import Standardizer

    data = make_data(seed=seed)
    cfg = ModelConfig(d_model=32, n_heads=4, n_layers=1, tokens_per_modality=2)
    torch.manual_seed(seed)
    model = build_model(ModelSpec.for_schema(cfg, data.schema)).eval()
    with torch.no_grad():  # non-uniform fusion weights, so explanations must report them
        model.modality_logit.weight.copy_(torch.randn_like(model.modality_logit.weight))
    fingerprints = {"/data/site-a": {"rna.csv": f"{seed:064x}"}}
    save_bundle(directory / "model", model_config=cfg, schema=data.schema,
                standardizer=Standardizer.fit(data), state_dict=model.state_dict(),
                lineage={"run_id": f"run-{seed}", "round": 3 + seed, "strategy": "fedavg",
                         "per_site_epsilon": {"site-a": 2.5, "site-b": 3.0},
                         "central_dp": None, "data_fingerprints": fingerprints,
                         "metrics": {"test": {"f1_macro": 0.5 + seed / 10}}})
    write_json(directory / "config.json", {"run_id": f"run-{seed}",
                                           "run_config": {"dp": "local"}})
    write_json(directory / "metrics.json", {"per_site_epsilon": {"site-a": 2.5}})
    return directory


def make_settings(tmp: Path, **overrides: Any) -> Any:
    from server.serving.settings import AuthSettings, ServingSettings

    defaults: dict[str, Any] = {"database_url": f"sqlite:///{tmp / 'serving.db'}",
                                "torch_threads": 1, "model": "production"}
    defaults.update(overrides)
    return ServingSettings.load(env={}, auth=AuthSettings(secret=SECRET), **defaults)


def open_registry(settings: Any) -> Any:
    from server.serving.audit_log import AuditLog
    from server.serving.database import open_database
    from server.serving.registry import Registry

    _, sessions = open_database(settings.database_url)
    return Registry(sessions, AuditLog(sessions, settings.audit_key))


def register(settings: Any, run_dir: Path, *, promote: bool = True, name: str = "cancer-alpha"
             ) -> str:
    from server.serving.registry import Actor

    registry = open_registry(settings)
    rec = registry.add(run_dir, name=name, actor=Actor("test-admin", "admin"))
    if promote:
        registry.promote(rec.ref, actor=Actor("test-admin", "admin"))
    return rec.ref


def tokens(settings: Any) -> dict[str, str]:
    """A token for every role."""
    from server.serving.auth import ROLES, TokenService

    service = TokenService(settings.auth)
    return {role: service.issue(f"user-{role}", role) for role in ROLES}


def patient_json(data: MultiOmicsData, i: int) -> dict[str, Any]:
    """One patient as the API takes it: present modalities only, raw values."""
    return {
        "patient_id": str(data.patient_ids[i]),
        "modalities": {m: dict(zip(data.schema.features(m), map(float, data.features[m][i]),
                                   strict=True))
                       for j, m in enumerate(data.modality_names) if data.mask[i, j]},
    }


# ------------------------------------------------------------------ a served test model
# Every endpoint with a request that the allowed roles may send, and those roles
# (None: public by design, for probes).
ENDPOINTS: list[tuple[str, str, set[str] | None]] = [
    ("GET", "/healthz", None),
    ("GET", "/readyz", None),
    ("GET", "/metrics", {"admin", "lead"}),
    ("GET", "/v1/schema", {"admin", "lead", "researcher"}),
    ("POST", "/v1/predict", {"researcher"}),
    ("POST", "/v1/predict/batch", {"researcher"}),
    ("POST", "/v1/explain", {"researcher"}),
    ("GET", "/v1/models", {"admin", "lead"}),
    ("GET", "/v1/models/{model_id}", {"admin", "lead"}),
    ("POST", "/v1/models/{model_id}/promote", {"admin", "lead"}),
    ("POST", "/v1/tokens", {"admin"}),
    ("DELETE", "/v1/tokens/{jti}", {"admin"}),
]


def serve_test_model(tmp: Path) -> dict[str, Any]:
    """An app serving the tiny bundle as the registry's production model, with its
    client, settings, registry reference, bundle, raw data and a token per role."""
    from fastapi.testclient import TestClient

    from common.bundle import load_bundle
    from server.serving.app import create_app

    run = make_bundle(tmp / "run")
    settings = make_settings(tmp, max_batch=8, max_explain_steps=64)
    ref = register(settings, run)
    app = create_app(settings)
    return {"app": app, "client": TestClient(app), "settings": settings, "ref": ref,
            "bundle": load_bundle(run), "data": make_data(n=40, seed=5),
            "tokens": tokens(settings), "run": run}


def create_app_for(tmp: Path, served: dict[str, Any], **settings: Any) -> Any:
    """Another app serving the served model's bundle directory, with other settings."""
    from server.serving.app import create_app

    return create_app(make_settings(tmp, model=str(served["run"]), **settings))


def call(served: dict[str, Any], method: str, path: str, role: str | None, **kw: Any) -> Any:
    """A request to the served app, with a token of ``role`` (None: anonymous)."""
    headers = kw.pop("headers", {})
    if role:
        headers["Authorization"] = f"Bearer {served['tokens'][role]}"
    return served["client"].request(method, path, headers=headers, **kw)


# ------------------------------------------------------------------ settings tests
def test_settings_precedence_toml_env_overrides(tmp_path: Path) -> None:
    from server.serving.settings import ServingSettings

    secret_file = tmp_path / "jwt.secret"
    secret_file.write_text(SECRET + "\n")
    config = tmp_path / "serving.toml"
    config.write_text(
        '[serving]\nport = 9000\nworkers = 3\nmax_batch = 10\nrequired_modalities = ["rna"]\n'
        f'[serving.auth]\nsecret_file = "{secret_file}"\naudience = "toml-aud"\n')
    env = {"CANCER_ALPHA_SERVE_PORT": "9100", "CANCER_ALPHA_JWT_AUDIENCE": "env-aud",
           "CANCER_ALPHA_DATABASE_URL": "sqlite:///x.db", "CANCER_ALPHA_SERVE_TORCHSCRIPT": "no"}
    s = ServingSettings.load(config, env=env, workers=2)
    assert (s.port, s.workers, s.max_batch) == (9100, 2, 10)  # env beats TOML, option beats env
    assert s.required_modalities == ("rna",)
    assert s.auth.secret == SECRET  # read from the file the TOML names, stripped
    assert s.auth.audience == "env-aud"
    assert s.database_url == "sqlite:///x.db" and s.torchscript is False
    assert SECRET not in repr(s)


def test_settings_refuse_inline_secrets_unknown_keys_and_bad_values(tmp_path: Path) -> None:
    from server.serving.settings import ServingSettings, SettingsError

    config = tmp_path / "serving.toml"
    config.write_text('[serving.auth]\nsecret = "in-the-file"\n')
    with pytest.raises(SettingsError, match="must not be written in a config file"):
        ServingSettings.load(config, env={})
    config.write_text("[serving]\nprot = 1\n")
    with pytest.raises(SettingsError, match=r"unknown keys \['prot'\]"):
        ServingSettings.load(config, env={})
    with pytest.raises(SettingsError, match="CANCER_ALPHA_SERVE_WORKERS"):
        ServingSettings.load(env={"CANCER_ALPHA_SERVE_WORKERS": "many"})
    with pytest.raises(SettingsError, match="ssl_keyfile and ssl_certfile"):
        ServingSettings.load(env={}, ssl_keyfile="key.pem")


def test_worker_handoff_carries_no_secret(tmp_path: Path) -> None:
    from server.serving.settings import WORKER_SETTINGS_ENV, ServingSettings

    s = ServingSettings.load(env={"CANCER_ALPHA_JWT_SECRET": SECRET}, port=8123, max_batch=7)
    payload = s.to_worker_env()
    assert SECRET not in payload
    worker = ServingSettings.from_worker_env(
        {WORKER_SETTINGS_ENV: payload, "CANCER_ALPHA_JWT_SECRET": SECRET})
    assert (worker.port, worker.max_batch, worker.auth.secret) == (8123, 7, SECRET)
    assert json.loads(payload)["auth"]["issuer"] == "cancer-alpha"
