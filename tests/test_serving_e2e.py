"""End to end on the real TCGA BRCA data: train a model, register and promote it with the
commands, start ``serve`` (uvicorn) in a subprocess on a free port, and talk to it over
HTTP with httpx. Predictions must equal ``bundle.predict_proba`` on the same held-out
patients; every endpoint answers 401 without a token and 403 to the wrong role; the
audit log of the whole session verifies.
"""

from __future__ import annotations

import concurrent.futures
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from test_serving_helpers import patient_json

from common.processes import free_port, stop_process

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("one_torch_thread")]

REPO = Path(__file__).resolve().parents[1]
ROLES = ("admin", "lead", "researcher", "site")
START_TIMEOUT_S = 120


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server.serving", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def brca_run(bundled_dir_module, tmp_path_factory, one_torch_thread) -> dict[str, Any]:
    """A short centralized training run on BRCA, written like ``train-central --out``."""
    from common.bundle import load_bundle, write_json
    from common.config import RunConfig
    from common.simulated_federation import load_federation
    from simulations.central import train_central

    source = bundled_dir_module("brca")
    run_dir = tmp_path_factory.mktemp("serving-e2e") / "run"
    cfg = RunConfig.preset("none", data=str(source), rounds=2, local_epochs=1, seed=0)
    fed = load_federation(cfg)
    result = train_central(fed, cfg, run_dir / "model")
    write_json(run_dir / "metrics.json", {k: v for k, v in result.items() if k != "history"})
    write_json(run_dir / "config.json", {"run_config": cfg.to_dict(), "federation": fed.record()})
    return {"dir": run_dir, "bundle": load_bundle(run_dir), "test": fed.test}


@pytest.fixture(scope="module")
def server(brca_run, tmp_path_factory) -> Any:
    tmp = tmp_path_factory.mktemp("serving-db")
    env = {**os.environ,
           "CANCER_ALPHA_DATABASE_URL": f"sqlite:///{tmp / 'serving.db'}",
           "CANCER_ALPHA_JWT_SECRET": secrets.token_urlsafe(48),
           "CANCER_ALPHA_SERVE_MAX_BATCH": "64"}
    added = cli(env, "registry", "add", str(brca_run["dir"]), "--name", "brca")
    assert added.returncode == 0, added.stderr
    ref = added.stdout.strip()
    promoted = cli(env, "registry", "promote", ref)
    assert promoted.returncode == 0, promoted.stderr
    tokens = {}
    for role in ROLES:
        issued = cli(env, "auth", "issue-token", "--subject", f"e2e-{role}", "--role", role)
        assert issued.returncode == 0, issued.stderr
        tokens[role] = issued.stdout.strip()

    port = free_port()
    log = (tmp / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.serving", "serve", "--port", str(port),
         "--model", "brca:production", "--threads", "1"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while True:
            assert proc.poll() is None, (tmp / "server.log").read_text()
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.25)
        with httpx.Client(base_url=base, timeout=30) as client:
            yield {"client": client, "tokens": tokens, "ref": ref, "env": env, "pid": proc.pid,
                   **brca_run}
    finally:
        stop_process(proc, grace=30)  # by its PID: SIGTERM, SIGKILL after 30 s
        log.close()


def auth(server, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {server['tokens'][role]}"}


def probabilities(pred: dict, labels: tuple[str, ...]) -> list[float]:
    return [pred["probabilities"][k] for k in labels]


def test_predictions_equal_the_bundle_on_real_patients(server) -> None:
    c, bundle, test = server["client"], server["bundle"], server["test"]
    labels = bundle.schema.label_names
    rows = np.arange(24)
    data = test.subset(rows)
    # Half of them without methylation: the server must report and handle the gap.
    data.mask[::2, data.modality_names.index("methylation")] = False
    data.features["methylation"][::2] = 0.0
    want = bundle.predict_proba(data)

    for i in range(len(rows)):
        r = c.post("/v1/predict", json=patient_json(data, i), headers=auth(server, "researcher"))
        assert r.status_code == 200, r.text
        pred = r.json()["prediction"]
        np.testing.assert_allclose(probabilities(pred, labels), want[i], rtol=1e-5, atol=1e-6)
        assert ("methylation" in pred["modalities_missing"]) == (i % 2 == 0)
        assert r.json()["model"]["model_id"] == server["ref"]

    r = c.post("/v1/predict/batch", headers=auth(server, "researcher"),
               json={"patients": [patient_json(data, i) for i in range(len(rows))]})
    assert r.status_code == 200, r.text
    got = [probabilities(p, labels) for p in r.json()["predictions"]]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_csv_upload_in_the_dataset_format(server, tmp_path: Path) -> None:
    bundle, test = server["bundle"], server["test"]
    data = test.subset(np.arange(30, 60))
    files = []
    for m in data.modality_names:
        if m == "mirna":  # a modality file absent from the upload: a warning, not an error
            continue
        frame = pd.DataFrame(data.features[m], index=data.patient_ids,
                             columns=list(data.schema.features(m)))
        frame.index.name = "patient_id"
        files.append(("files", (f"{m}.csv", frame.to_csv().encode(), "text/csv")))
    r = server["client"].post("/v1/predict/batch", files=files,
                              headers=auth(server, "researcher"))
    assert r.status_code == 200, r.text
    body = r.json()
    data.mask[:, data.modality_names.index("mirna")] = False
    data.features["mirna"][:] = 0.0
    want = bundle.predict_proba(data)
    got = [probabilities(p, bundle.schema.label_names) for p in body["predictions"]]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert [p["patient_id"] for p in body["predictions"]] == list(data.patient_ids)
    assert any("mirna" in w for w in body["warnings"])


def test_every_endpoint_refuses_missing_token_and_wrong_role(server) -> None:
    c, ref = server["client"], server["ref"]
    p = patient_json(server["test"], 0)
    matrix = [
        ("GET", "/metrics", None, {"admin", "lead"}),
        ("GET", "/v1/schema", None, {"admin", "lead", "researcher"}),
        ("POST", "/v1/predict", p, {"researcher"}),
        ("POST", "/v1/predict/batch", {"patients": [p]}, {"researcher"}),
        ("POST", "/v1/explain", {**p, "steps": 8}, {"researcher"}),
        ("GET", "/v1/models", None, {"admin", "lead"}),
        ("GET", f"/v1/models/{ref}", None, {"admin", "lead"}),
        ("POST", f"/v1/models/{ref}/promote", {"stage": "production"}, {"admin", "lead"}),
        ("POST", "/v1/tokens", {"subject": "x", "role": "site"}, {"admin"}),
        ("DELETE", "/v1/tokens/{jti}", None, {"admin"}),
    ]
    spec = c.get("/openapi.json").json()
    listed = {(m.upper(), path.replace("{model_id}", ref)) for path, ops in spec["paths"].items()
              for m in ops}
    public = {("GET", "/healthz"), ("GET", "/readyz")}
    assert listed == {(m, u) for m, u, _, _ in matrix} | public
    for method, url in public:
        assert c.request(method, url).status_code == 200
    for method, path, body, allowed in matrix:
        url = path.replace("{jti}", uuid.uuid4().hex)  # a fresh token id to revoke
        assert c.request(method, url, json=body).status_code == 401, url
        for role in ROLES:
            url = path.replace("{jti}", uuid.uuid4().hex)
            status = c.request(method, url, json=body, headers=auth(server, role)).status_code
            ok = 204 if method == "DELETE" else 200
            assert status == (ok if role in allowed else 403), (url, role, status)


def test_explain_on_a_real_patient(server) -> None:
    r = server["client"].post("/v1/explain", headers=auth(server, "researcher"),
                              json={**patient_json(server["test"], 5), "top_k": 8})
    assert r.status_code == 200, r.text
    e = r.json()
    total = sum(m["attribution"] for m in e["modalities"])
    assert total == pytest.approx(e["target_probability"] - e["baseline_probability"],
                                  abs=e["convergence_delta"] + 1e-6)
    assert len(e["top_features"]) == 8
    assert set(e["learned_modality_weights"]) == set(server["bundle"].schema.modality_names)


def test_concurrent_requests_and_metrics(server) -> None:
    """32 requests at once (the server batches them): each gets its own patient's answer."""
    c, bundle = server["client"], server["bundle"]
    data = server["test"].subset(np.arange(32))
    headers = auth(server, "researcher")
    base = str(c.base_url)

    def one(i: int) -> httpx.Response:
        return httpx.post(f"{base}/v1/predict", json=patient_json(data, i), headers=headers,
                          timeout=60)

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        responses = list(pool.map(one, range(32)))
    assert [r.status_code for r in responses] == [200] * 32
    want = bundle.predict_proba(data)
    for i, r in enumerate(responses):
        pred = r.json()["prediction"]
        assert pred["patient_id"] == data.patient_ids[i]
        np.testing.assert_allclose(probabilities(pred, bundle.schema.label_names), want[i],
                                   rtol=1e-5, atol=1e-6)
    text = c.get("/metrics", headers=auth(server, "lead")).text
    line = next(ln for ln in text.splitlines() if ln.startswith(
        'cancer_alpha_http_requests_total{method="POST",route="/v1/predict",status="200"}'))
    assert float(line.rsplit(" ", 1)[1]) >= 32
    assert "cancer_alpha_predictions_total{" in text


def test_promotion_and_audit_verify(server) -> None:
    c, env = server["client"], server["env"]
    r = c.post(f"/v1/models/{server['ref']}/promote", json={"stage": "production"},
               headers={**auth(server, "lead"), "X-Request-ID": "e2e-promote"})
    assert r.status_code == 200 and r.json()["serving"]
    models = c.get("/v1/models", headers=auth(server, "admin")).json()["models"]
    rec = next(m for m in models if m["model_id"] == server["ref"])
    assert rec["stage"] == "production" and rec["data_fingerprints"]  # lineage kept
    assert rec["metrics"]["test"]["f1_macro"] > 0
    verified = cli(env, "audit", "verify", "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert '"ok": true' in verified.stdout

    from server.serving.audit_log import AuditLog
    from server.serving.database import open_database

    records = AuditLog(open_database(env["CANCER_ALPHA_DATABASE_URL"])[1]).records()
    actions = {r.action for r in records}
    assert {"registry.add", "registry.promote", "auth.issue_token", "predict",
            "predict_batch", "explain"} <= actions
    assert any(r.request_id == "e2e-promote" and r.actor == "e2e-lead" for r in records)


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (PEM files)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def test_direct_tls(server, tmp_path: Path) -> None:
    """``serve --ssl-certfile/--ssl-keyfile``: HTTPS with the given certificate."""
    import ssl

    cert, key = self_signed(tmp_path)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.serving", "serve", "--port", str(port), "--model",
         str(server["dir"]), "--threads", "1", "--ssl-certfile", str(cert),
         "--ssl-keyfile", str(key), "--log-level", "warning"],
        cwd=REPO, env=server["env"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    context = ssl.create_default_context(cafile=str(cert))
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert proc.poll() is None, "TLS server exited"
            try:
                r = httpx.get(f"https://127.0.0.1:{port}/readyz", verify=context, timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "TLS server did not become ready"
                time.sleep(0.25)
        assert r.status_code == 200 and r.json()["model_id"].startswith("bundle:")
        with pytest.raises(httpx.TransportError):  # plain HTTP is not served on that port
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).raise_for_status()
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
