"""deploy/: the inference service in Compose, Prometheus scraping it, and the serving
Grafana dashboard beside the federation one.

The Compose service's command line is parsed by the real CLI in the container's
environment; Prometheus's scrape job is replayed against the real app (the same path and
a bearer token of the role it documents); the dashboard queries only metrics the service
exposes, under the job name Prometheus gives them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from test_deploy_assets import (
    COMPOSE_DIR,
    DASHBOARD,
    _host_path,
    _mounts,
    _parse_cli,
    _service_command,
    compose,
)

SERVING_DASHBOARD = COMPOSE_DIR / "grafana" / "dashboards" / "serving.json"
PROMETHEUS = COMPOSE_DIR / "prometheus" / "prometheus.yml"
SERVE_JOB = "cancer-alpha-serve"


def _prometheus() -> dict:
    return yaml.safe_load(PROMETHEUS.read_text())


def _job(name: str) -> dict:
    (job,) = [j for j in _prometheus()["scrape_configs"] if j["job_name"] == name]
    return job


def test_compose_runs_the_inference_service_hardened(monkeypatch):
    services = compose()["services"]
    svc = services["serve"]
    assert svc["build"]["target"] == "serve"
    assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"]
    argv, env = _service_command("serve")
    path, params = _parse_cli(argv, env, monkeypatch)
    assert path == ["serve"]
    assert params["host"] == "0.0.0.0" and params["port"] == 8000
    mounts = _mounts(svc)
    # the registry database lives in the writable state volume
    db = env["CANCER_ALPHA_DATABASE_URL"].removeprefix("sqlite:///")
    assert Path(db).parent.as_posix() == "/var/lib/cancer-alpha"
    assert not mounts["/var/lib/cancer-alpha"][1]
    # secrets come from read-only files, never inline values
    assert "CANCER_ALPHA_JWT_SECRET" not in env and "CANCER_ALPHA_AUDIT_KEY" not in env
    for var in ("CANCER_ALPHA_JWT_SECRET_FILE", "CANCER_ALPHA_AUDIT_KEY_FILE"):
        parent = Path(env[var]).parent.as_posix()
        assert mounts[parent][1], f"{var}: {parent} must be mounted read-only"
        assert _host_path(mounts[parent][0]).relative_to(COMPOSE_DIR).parts[0] == "certs"
    # the coordinator's runs, to register models from: read-only
    assert mounts["/coordinator"] == ("coordinator-state", True)
    assert svc["ports"] == ["127.0.0.1:8000:8000"]
    assert "monitoring" in svc["networks"]
    assert not set(svc["networks"]) & {"site-a", "site-b", "site-c", "control"}


def test_prometheus_scrapes_the_inference_service_with_a_token():
    job = _job(SERVE_JOB)
    (target,) = [t for sc in job["static_configs"] for t in sc["targets"]]
    argv, _ = _service_command("serve")
    assert target == f"serve:{argv[argv.index('--port') + 1]}"
    assert job["authorization"]["type"] == "Bearer"
    token_file = Path(job["authorization"]["credentials_file"])
    prom_mounts = _mounts(compose()["services"]["prometheus"])
    source, ro = prom_mounts[token_file.parent.as_posix()]
    assert ro and _host_path(source).relative_to(COMPOSE_DIR).parts[0] == "certs"
    assert "certs/" in (COMPOSE_DIR / ".gitignore").read_text().split()  # never committed


def test_the_scrape_job_works_against_the_real_service(tmp_path):
    """Prometheus's request (its path, a bearer token of the documented role) gets the
    metrics; without the token it is refused."""
    from test_serving_helpers import call, patient_json, serve_test_model

    served = serve_test_model(tmp_path)
    job = _job(SERVE_JOB)
    path = job.get("metrics_path", "/metrics")
    assert call(served, "POST", "/v1/predict", "researcher",
                json=patient_json(served["data"], 0)).status_code == 200
    assert call(served, "GET", path, None).status_code == 401
    # deploy/README.md: `auth issue-token --subject prometheus --role lead`
    assert "--subject prometheus --role lead" in " ".join(
        (COMPOSE_DIR.parent / "README.md").read_text().split())
    response = call(served, "GET", path, "lead")
    assert response.status_code == 200
    names = _sample_names(response.text)
    assert {"cancer_alpha_http_requests_total", "cancer_alpha_model_info",
            "cancer_alpha_http_request_duration_seconds_bucket",
            "cancer_alpha_predictions_total"} <= names


# ---------------------------------------------------------------- the serving dashboard
def _sample_names(text: str) -> set[str]:
    return {line.split("{")[0].split()[0] for line in text.splitlines()
            if line and not line.startswith("#")}


def _exposed_serving_names() -> set[str]:
    """Every sample name the service's metrics produce (each series touched once)."""
    from prometheus_client import generate_latest

    from server.serving.prometheus import ServingMetrics

    m = ServingMetrics()
    m.requests.labels("/v1/predict", "POST", "500").inc()
    m.latency.labels("/v1/predict", "POST").observe(0.01)
    m.predictions.labels("LumA", "brca:1").inc()
    m.errors.labels("/v1/predict", "internal").inc()
    m.model_info.labels("brca:1", "production").set(1)
    return _sample_names(generate_latest(m.registry).decode())


def test_serving_dashboard_queries_only_exposed_metrics_of_the_serve_job():
    dash = json.loads(SERVING_DASHBOARD.read_text())
    federation = json.loads(DASHBOARD.read_text())
    assert dash["uid"] != federation["uid"] and dash["title"] != federation["title"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    exposed = _exposed_serving_names()
    used: set[str] = set()
    for panel in dash["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == federation["panels"][1]["datasource"]["uid"]
        for target in panel["targets"]:
            expr = target["expr"]
            assert f'job="{SERVE_JOB}"' in expr, (panel["title"], expr)
            assert expr.count("(") == expr.count(")"), expr
            names = set(re.findall(r"\bcancer_alpha_\w+", expr))
            assert names - exposed == set(), f"{panel['title']}: {sorted(names - exposed)}"
            used |= names | ({"up"} if "up{" in expr else set())
    # latency, throughput, errors and the model id each have a panel
    assert {"cancer_alpha_http_request_duration_seconds_bucket",
            "cancer_alpha_http_requests_total", "cancer_alpha_errors_total",
            "cancer_alpha_model_info", "up"} <= used
    quantiles = {q for p in dash["panels"] for t in p.get("targets", [])
                 for q in re.findall(r"histogram_quantile\((0\.\d+)", t["expr"])}
    assert {"0.5", "0.95", "0.99"} <= quantiles


def test_serving_dashboard_is_provisioned_beside_the_federation_one():
    grafana = compose()["services"]["grafana"]
    mounts = _mounts(grafana)
    prov = _host_path(mounts["/etc/grafana/provisioning"][0])
    providers = yaml.safe_load((prov / "dashboards" / "cancer-alpha.yml").read_text())
    folder = _host_path(mounts[providers["providers"][0]["options"]["path"]][0])
    assert sorted(p.name for p in folder.glob("*.json")) == sorted(
        [DASHBOARD.name, SERVING_DASHBOARD.name])


@pytest.mark.parametrize("job", ["cancer-alpha-coordinator", SERVE_JOB])
def test_both_jobs_are_on_the_monitoring_network(job):
    host = _job(job)["static_configs"][0]["targets"][0].split(":")[0]
    services = compose()["services"]
    assert "monitoring" in services[host]["networks"]
    assert "monitoring" in services["prometheus"]["networks"]
