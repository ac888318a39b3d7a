"""Tests for deploy/: Dockerfile lint and structure, Compose, Kubernetes, Grafana.

Everything here runs offline. Only the image build needs a Docker daemon, and only
that test is skipped without one.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
import time
import tomllib
from functools import cache
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from prometheus_client import generate_latest

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
COMPOSE_DIR = DEPLOY / "compose"
K8S = DEPLOY / "k8s"
DASHBOARD = COMPOSE_DIR / "grafana" / "dashboards" / "cancer-alpha.json"
TARGETS = ("coordinator", "site", "serve")
SITES = ("site-a", "site-b", "site-c")
K8S_VERSIONS = ("1.29.0", "1.37.0")  # oldest supported, newest schema bundled
K8S_ENTRY_POINTS = ("coordinator", "inference", *(f"site/overlays/{s}" for s in SITES))


def _tool(name: str) -> str:
    """A test tool from the venv running pytest, else from PATH; fail when missing."""
    path = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: install the test extra (pip install -e '.[test]')")
    return path


# ---------------------------------------------------------------- Dockerfile


def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """Stage name -> its (INSTRUCTION, arguments) pairs; "" holds the global ARGs."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: dict[str, list[tuple[str, str]]] = {"": []}
    current = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            m = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", rest.strip(), re.IGNORECASE)
            assert m, f"every stage is named: FROM {rest}"
            current = m.group(2)
            stages[current] = [("FROM", m.group(1))]
        else:
            stages[current].append((keyword, " ".join(rest.split())))
    return stages


def _args(stages: dict[str, list[tuple[str, str]]], stage: str) -> dict[str, str]:
    return dict(a.split("=", 1) for k, a in stages[""] + stages[stage] if k == "ARG" and "=" in a)


def _env(stages: dict[str, list[tuple[str, str]]], stage: str) -> dict[str, str]:
    """ENV of ``stage`` including what it inherits from the stages it is built FROM."""
    chain, name = [], stage
    while name in stages:
        chain.append(name)
        name = stages[name][0][1]
    env: dict[str, str] = {}
    for name in reversed(chain):
        for keyword, rest in stages[name]:
            if keyword == "ENV":
                env.update(re.findall(r"(\w+)=(\S+)", rest))
    return env


def test_dockerfile_passes_hadolint():
    out = subprocess.run([_tool("hadolint"), "--no-color", "--failure-threshold", "info",
                          str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path):
    """The linter call above is not a no-op: a root image with `latest` and apt fails."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\n"
                   "COPY . /app\n")
    out = subprocess.run([_tool("hadolint"), "--no-color", str(bad)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode != 0
    assert "DL3007" in out.stdout and "DL3008" in out.stdout


def test_dockerfile_is_multi_stage_with_the_three_targets():
    stages = dockerfile_stages()
    assert {"builder", "runtime", *TARGETS} <= set(stages)
    for target in TARGETS:
        assert stages[target][0] == ("FROM", "runtime"), target
    # the runtime starts from the plain base image, not from the builder...
    assert stages["runtime"][0] == ("FROM", stages["builder"][0][1]) == ("FROM",
                                                                         "${PYTHON_IMAGE}")
    assert _args(stages, "runtime")["PYTHON_IMAGE"].startswith("python:3.11-slim")
    # ...and takes only the virtualenv from it
    from_builder = [a for k, a in stages["runtime"] if k == "COPY" and "--from=" in a]
    assert from_builder == ["--from=builder /opt/venv /opt/venv"]


def test_images_run_as_a_non_root_user():
    stages = dockerfile_stages()
    users = [a for k, a in stages["runtime"] if k == "USER"]
    assert len(users) == 1
    uid = users[0].replace("${APP_UID}", _args(stages, "runtime")["APP_UID"])
    assert re.fullmatch(r"\d+:\d+", uid) and uid.split(":")[0] != "0", uid
    for target in TARGETS:
        assert not [a for k, a in stages[target] if k == "USER"], f"{target} changes user"


def test_dockerfile_copies_code_only_and_every_package():
    stages = dockerfile_stages()
    instructions = [(k, a) for stage in stages.values() for k, a in stage]
    assert not [a for k, a in instructions if k == "ADD"]
    sources = set()
    for keyword, rest in instructions:
        if keyword == "COPY" and "--from=" not in rest:
            *src, _dest = rest.split()
            sources.update(src)
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"]["find"]["include"]
    expected = {"pyproject.toml", "README.md", "deploy/docker/requirements.py",
                *(p.rstrip("*") for p in packages)}
    assert sources == expected
    for src in sources:
        assert (REPO / src).exists(), src
    # the build context allowlist admits exactly these, and denies everything else first
    ignore = [line.strip() for line in
              (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*"
    assert {e[1:].rstrip("/") for e in ignore if e.startswith("!")} == expected
    assert {"**/*.key", "**/*.pem"} <= set(ignore)


def test_torch_is_the_pinned_cpu_wheel_and_flower_runs_offline():
    stages = dockerfile_stages()
    args = _args(stages, "builder")
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"torch=={args['TORCH_VERSION']}" in deps
    runs = [a for k, a in stages["builder"] if k == "RUN"]
    torch_run = next(r for r in runs if '"torch==${TORCH_VERSION}"' in r)
    assert '--index-url "${TORCH_INDEX_URL}"' in torch_run
    assert any("--no-deps ." in r for r in runs)  # the project itself adds no dependency
    for target in TARGETS:
        env = _env(stages, target)
        assert env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"
        assert env["FLWR_DISABLE_UPDATE_CHECK"] == "1"
        assert env["FLWR_TELEMETRY_ENABLED"] == "0"
        assert env["FLWR_HOME"] == "/var/lib/cancer-alpha/flwr"


def _image_requirements(pyproject: Path, *extras: str) -> list[str]:
    script = DOCKERFILE.parent / "requirements.py"
    out = subprocess.run([sys.executable, str(script), "--pyproject", str(pyproject), *extras],
                         capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.split()


def test_image_requirements_are_pyproject_without_ray():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    reqs = _image_requirements(REPO / "pyproject.toml", "serve")
    assert len(reqs) >= len(deps)
    assert not any("simulation" in r or r.startswith("ray") for r in reqs)
    flwr = next(d for d in deps if d.startswith("flwr"))
    assert flwr.replace("[simulation]", "") in reqs
    assert set(deps) - {flwr} <= set(reqs)


def test_image_requirements_add_defined_extras_only(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        '[project]\nname = "x"\n'
        'dependencies = ["flwr[simulation,rest]==1.41.0", "torch==2.13.0"]\n'
        '[project.optional-dependencies]\nserve = ["fastapi>=0.110", "uvicorn"]\n'
        'test = ["pytest"]\n')
    assert _image_requirements(pyproject) == ["flwr[rest]==1.41.0", "torch==2.13.0"]
    assert _image_requirements(pyproject, "serve", "gpu") == [
        "flwr[rest]==1.41.0", "torch==2.13.0", "fastapi>=0.110", "uvicorn"]


def test_targets_start_the_right_command():
    stages = dockerfile_stages()
    entry = [a for k, a in stages["runtime"] if k == "ENTRYPOINT"]
    assert entry == ['["cancer-alpha"]']
    cmd = {t: json.loads(next(a for k, a in stages[t] if k == "CMD")) for t in TARGETS}
    assert cmd["coordinator"] == ["coordinator", "start"]
    assert cmd["site"] == ["site", "start", "--config", "/etc/cancer-alpha/site.toml"]
    assert cmd["serve"][0] == "serve" and "8000" in cmd["serve"]
    expose = {t: " ".join(a for k, a in stages[t] if k == "EXPOSE").split() for t in TARGETS}
    assert expose == {"coordinator": ["9092", "9093", "9100"], "site": [], "serve": ["8000"]}
    # Compose starts the sites once this check passes (depends_on: service_healthy)
    (health,) = [a for k, a in stages["coordinator"] if k == "HEALTHCHECK"]
    assert "('127.0.0.1', 9092)" in health
    env = _env(stages, "coordinator")
    assert env["CANCER_ALPHA_METRICS_PORT"] == "9100"
    assert env["PROMETHEUS_MULTIPROC_DIR"].startswith("/var/lib/cancer-alpha/")


# ---------------------------------------------------------------- Compose


@cache
def compose() -> dict:
    return yaml.safe_load((COMPOSE_DIR / "docker-compose.yml").read_text())


def _mounts(service: dict) -> dict[str, tuple[str, bool]]:
    """Container path -> (host source or volume name, read-only)."""
    out = {}
    for spec in service.get("volumes", []):
        m = re.fullmatch(r"(\$\{[^}]*\}[^:]*|[^:$]+):([^:]+)(?::(ro|rw))?", spec)
        assert m, f"unparsed volume {spec}"
        out[m.group(2)] = (m.group(1), m.group(3) == "ro")
    return out


def _host_path(source: str) -> Path | None:
    """The default host path of a bind mount (``${VAR:-./x}`` -> ./x); None for a volume."""
    m = re.fullmatch(r"\$\{\w+:-([^}]+)\}(.*)", source)
    if m:
        source = m.group(1) + m.group(2)
    return COMPOSE_DIR / source if source.startswith(".") else None


def test_compose_services_and_builds():
    services = compose()["services"]
    assert set(services) == {"coordinator", *SITES, "prometheus", "grafana"}
    stages = dockerfile_stages()
    for name in ("coordinator", *SITES):
        build = services[name]["build"]
        assert (COMPOSE_DIR / build["context"]).resolve() == REPO
        assert (REPO / build["dockerfile"]).resolve() == DOCKERFILE
        assert build["target"] in stages
        assert build["target"] == ("coordinator" if name == "coordinator" else "site")
        assert services[name]["read_only"] is True
        assert services[name]["cap_drop"] == ["ALL"]


def test_compose_mounts_exist_or_are_ignored_inputs():
    gitignored = (COMPOSE_DIR / ".gitignore").read_text().split()
    named = set(compose()["volumes"])
    for name, service in compose()["services"].items():
        for target, (source, ro) in _mounts(service).items():
            host = _host_path(source)
            if host is None:
                assert source in named, f"{name}: undeclared volume {source}"
                continue
            rel = host.relative_to(COMPOSE_DIR).as_posix()
            if rel.split("/")[0] + "/" in gitignored:  # certs/ and data/: operator's inputs
                assert ro, f"{name}: {target} must be read-only"
            else:
                assert host.exists(), f"{name}: {host} missing"
                assert ro, f"{name}: config {target} must be read-only"


def test_compose_sites_reach_only_the_coordinator():
    c = compose()
    services = c["services"]
    for site in SITES:
        svc = services[site]
        assert svc["networks"] == [site]
        assert c["networks"][site] == {"internal": True}
        assert "ports" not in svc
        assert svc["depends_on"]["coordinator"]["condition"] == "service_healthy"
        assert site in services["coordinator"]["networks"]
        others = [n for n, s in services.items() if n != "coordinator" and site in
                  s.get("networks", [])]
        assert others == [site]
        mounts = _mounts(svc)
        assert mounts["/data"][1], "data are mounted read-only"
        assert not mounts["/var/lib/cancer-alpha"][1]
    for published in services["coordinator"]["ports"] + services["grafana"]["ports"]:
        assert published.startswith("127.0.0.1:")


def test_compose_site_configs_match_their_mounts():
    ids = set()
    for site in SITES:
        svc = compose()["services"][site]
        mounts = _mounts(svc)
        cfg_host = _host_path(mounts["/etc/cancer-alpha/site.toml"][0])
        cfg = tomllib.loads(cfg_host.read_text())
        ids.add(cfg["site"]["id"])
        assert cfg["site"]["id"] == site
        assert cfg["site"]["data-dir"] in mounts
        assert cfg["site"]["state-dir"] in mounts
        assert cfg["coordinator"]["address"] == "coordinator:9092"
        for path in cfg["tls"].values():
            assert Path(path).parent.as_posix() in mounts, path
        assert cfg["privacy"]["epsilon"] > 0
    assert len(ids) == len(SITES)


def test_prometheus_scrapes_the_coordinator_metrics_port():
    prom = yaml.safe_load((COMPOSE_DIR / "prometheus" / "prometheus.yml").read_text())
    targets = {job["job_name"]: t for job in prom["scrape_configs"]
               for sc in job["static_configs"] for t in sc["targets"]}
    port = _env(dockerfile_stages(), "coordinator")["CANCER_ALPHA_METRICS_PORT"]
    assert targets["cancer-alpha-coordinator"] == f"coordinator:{port}"
    prom_mounts = _mounts(compose()["services"]["prometheus"])
    assert _host_path(prom_mounts["/etc/prometheus/prometheus.yml"][0]).exists()
    assert "monitoring" in compose()["services"]["coordinator"]["networks"]


def test_grafana_provisioning_matches_the_dashboard():
    grafana = compose()["services"]["grafana"]
    mounts = _mounts(grafana)
    prov = _host_path(mounts["/etc/grafana/provisioning"][0])
    datasources = yaml.safe_load((prov / "datasources" / "prometheus.yml").read_text())
    ds = datasources["datasources"][0]
    assert ds["url"] == "http://prometheus:9090" and ds["type"] == "prometheus"
    providers = yaml.safe_load((prov / "dashboards" / "cancer-alpha.yml").read_text())
    path = providers["providers"][0]["options"]["path"]
    assert _host_path(mounts[path][0]) == DASHBOARD.parent
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == (
        f"{path}/{DASHBOARD.name}")
    dash = json.loads(DASHBOARD.read_text())
    for panel in dash["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == ds["uid"], panel["title"]
            assert all(t["datasource"]["uid"] == ds["uid"] for t in panel["targets"])


# ---------------------------------------------------------------- Grafana dashboard


def _exposed_sample_names() -> set[str]:
    from server.monitoring import CoordinatorMetrics

    metrics = CoordinatorMetrics()
    metrics.run_started("r", "fedavg", "local", rounds=2, epsilon_budget=8.0)
    metrics.round_completed({
        "round": 1, "rejected": [{"site": "b", "reason": "site error: x"}], "seconds": 3.0,
        "update_bytes": {"a": 100}, "train": {"loss": 1.0}, "central_epsilon": 0.5,
        "sites": [{"site": "a", "n_train": 5, "epsilon": 1.0}],
        "val": {"loss": 1.0, "accuracy": 0.5, "f1_macro": 0.4},
    })
    metrics.run_finished(ok=True)
    text = generate_latest(metrics.registry).decode()
    return {line.split("{")[0].split()[0] for line in text.splitlines()
            if line and not line.startswith("#")}


def test_dashboard_is_valid_and_queries_only_exposed_metrics():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    exposed = _exposed_sample_names()
    used = set()
    for panel in dash["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        for target in panel.get("targets", []):
            names = set(re.findall(r"\bcancer_alpha_\w+", target["expr"]))
            assert names or "up{" in target["expr"], target["expr"]
            missing = names - exposed
            assert not missing, f"{panel['title']}: {sorted(missing)} not exposed"
            used |= names
    # the headline quantities of the issue all have a panel
    for name in ("cancer_alpha_round", "cancer_alpha_participating_sites",
                 "cancer_alpha_round_duration_seconds_bucket",
                 "cancer_alpha_update_size_bytes_sum", "cancer_alpha_rejected_updates_total",
                 "cancer_alpha_site_epsilon", "cancer_alpha_rounds_total"):
        assert name in used, name


# ---------------------------------------------------------------- Kubernetes


def _validate(resource: dict) -> None:
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            name = resource.get("metadata", {}).get("name")
            pytest.fail(f"{resource['kind']}/{name} invalid for Kubernetes {version}: {e}")


def _raw_manifests() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def test_every_manifest_file_validates_against_the_kubernetes_schema():
    files = _raw_manifests()
    assert len(files) >= 15
    for path in files:
        for resource in yaml.safe_load_all(path.read_text()):
            _validate(resource)


def test_schema_validation_rejects_a_broken_manifest():
    deployment = yaml.safe_load((K8S / "inference" / "deployment.yaml").read_text())
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFilesystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[0], strict=True)
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8000"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[0], strict=True)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, list[dict]]:
    """Every kustomization entry point rendered by `kubectl kustomize`, offline.

    Rendered in a copy of deploy/k8s where each secretGenerator file exists (the real
    certificates are the operator's and never in the repository).
    """
    kubectl = _tool("kubectl")
    root = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, root)
    out = {}
    for entry in K8S_ENTRY_POINTS:
        kustomization = yaml.safe_load((root / entry / "kustomization.yaml").read_text())
        for gen in kustomization.get("secretGenerator", []):
            for f in gen["files"]:
                assert f.startswith("certs/"), f"{entry}: secrets come from certs/ only"
                (root / entry / f).parent.mkdir(parents=True, exist_ok=True)
                (root / entry / f).write_text(f"test material for {f}\n")
        proc = subprocess.run([kubectl, "kustomize", str(root / entry)], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, f"{entry}: {proc.stderr}"
        out[entry] = [r for r in yaml.safe_load_all(proc.stdout) if r]
    return out


def _of_kind(resources: list[dict], kind: str) -> list[dict]:
    return [r for r in resources if r["kind"] == kind]


def _pod_specs(resources: list[dict]) -> list[dict]:
    return [r["spec"]["template"]["spec"] for r in resources
            if r["kind"] in ("Deployment", "StatefulSet")]


def test_rendered_manifests_validate(rendered):
    assert set(rendered) == set(K8S_ENTRY_POINTS)
    for resources in rendered.values():
        for resource in resources:
            _validate(resource)


def test_pods_are_non_root_read_only_and_reference_rendered_secrets(rendered):
    images = set()
    for entry, resources in rendered.items():
        specs = _pod_specs(resources)
        assert len(specs) == 1, entry
        secrets = {s["metadata"]["name"] for s in _of_kind(resources, "Secret")}
        configmaps = {c["metadata"]["name"] for c in _of_kind(resources, "ConfigMap")}
        for spec in specs:
            ctx = spec["securityContext"]
            assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] != 0
            assert ctx["seccompProfile"]["type"] == "RuntimeDefault"
            assert spec["automountServiceAccountToken"] is False
            for container in spec["containers"]:
                sc = container["securityContext"]
                assert sc["readOnlyRootFilesystem"] is True, entry
                assert sc["allowPrivilegeEscalation"] is False
                assert sc["capabilities"]["drop"] == ["ALL"]
                assert "memory" in container["resources"]["limits"]
                images.add(container["image"].split(":")[0])
            for volume in spec["volumes"]:
                assert "hostPath" not in volume
                if "secret" in volume:
                    assert volume["secret"]["secretName"] in secrets, entry
                if "configMap" in volume:
                    assert volume["configMap"]["name"] in configmaps, entry
            writable = {m["mountPath"] for c in spec["containers"] for m in c["volumeMounts"]
                        if not m.get("readOnly")}
            assert "/tmp" in writable
    assert images == {f"cancer-alpha-{t}" for t in TARGETS}


def test_site_network_policies_allow_only_the_coordinator(rendered):
    coordinator = rendered["coordinator"]
    coord_ns = _of_kind(coordinator, "Namespace")[0]["metadata"]["name"]
    coord_pod_labels = _pod_specs_labels(coordinator)
    namespaces = set()
    for site in SITES:
        resources = rendered[f"site/overlays/{site}"]
        ns = _of_kind(resources, "Namespace")
        assert len(ns) == 1
        namespaces.add(ns[0]["metadata"]["name"])
        assert ns[0]["metadata"]["labels"]["cancer-alpha/role"] == "site"
        assert all(r["metadata"].get("namespace") == ns[0]["metadata"]["name"]
                   for r in resources if r["kind"] != "Namespace")
        (policy,) = _of_kind(resources, "NetworkPolicy")
        spec = policy["spec"]
        assert spec["podSelector"] == {}  # every pod of the site's namespace
        assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
        assert not spec.get("ingress")  # nothing reaches a site
        peers = []
        for rule in spec["egress"]:
            ports = {(p["protocol"], p["port"]) for p in rule["ports"]}
            for peer in rule["to"]:
                assert "ipBlock" not in peer
                ns_name = peer["namespaceSelector"]["matchLabels"][
                    "kubernetes.io/metadata.name"]
                peers.append((ns_name, peer["podSelector"]["matchLabels"], ports))
        assert len(peers) == 2
        (coord_peer,) = [p for p in peers if p[0] == coord_ns]
        assert coord_peer[2] == {("TCP", 9092)}
        assert coord_peer[1].items() <= coord_pod_labels.items()
        (dns_peer,) = [p for p in peers if p[0] == "kube-system"]
        assert dns_peer[1] == {"k8s-app": "kube-dns"}
        assert dns_peer[2] == {("UDP", 53), ("TCP", 53)}
    assert len(namespaces) == len(SITES)  # separate releases, separate namespaces


def _pod_specs_labels(resources: list[dict]) -> dict[str, str]:
    (workload,) = [r for r in resources if r["kind"] in ("Deployment", "StatefulSet")]
    return workload["spec"]["template"]["metadata"]["labels"]


def test_coordinator_admits_sites_on_the_fleet_api_only(rendered):
    coordinator = rendered["coordinator"]
    (policy,) = _of_kind(coordinator, "NetworkPolicy")
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"].items() <= _pod_specs_labels(coordinator).items()
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
    by_port = {}
    for rule in spec["ingress"]:
        (port,) = rule["ports"]
        by_port[port["port"]] = rule["from"]
    assert set(by_port) == {9092, 9093, 9100}
    assert by_port[9092] == [{"namespaceSelector": {"matchLabels": {
        "cancer-alpha/role": "site"}}}]
    assert [p["port"] for r in spec["egress"] for p in r["ports"]] == [53, 53]
    (service,) = _of_kind(coordinator, "Service")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {
        "fleet": 9092, "control": 9093, "metrics": 9100}
    # every site dials exactly this Service
    address = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc:9092"
    for site in SITES:
        (cm,) = _of_kind(rendered[f"site/overlays/{site}"], "ConfigMap")
        cfg = tomllib.loads(cm["data"]["site.toml"])
        assert cfg["site"]["id"] == site
        assert cfg["coordinator"]["address"] == address
    (secret,) = _of_kind(coordinator, "Secret")
    assert set(secret["data"]) == {"ca.crt", "server.crt", "server.key"}


def test_inference_service_scales_and_ends_tls_at_the_ingress(rendered):
    resources = rendered["inference"]
    (deployment,) = _of_kind(resources, "Deployment")
    (hpa,) = _of_kind(resources, "HorizontalPodAutoscaler")
    (ingress,) = _of_kind(resources, "Ingress")
    (service,) = _of_kind(resources, "Service")
    (secret,) = _of_kind(resources, "Secret")
    assert "replicas" not in deployment["spec"]  # owned by the HPA
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert 1 < hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert "cpu" in container["resources"]["requests"]  # utilisation needs a request
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert secret["type"] == "kubernetes.io/tls"
    assert ingress["spec"]["tls"][0]["secretName"] == secret["metadata"]["name"]
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == service["metadata"]["name"]
    (policy,) = _of_kind(resources, "NetworkPolicy")
    assert policy["spec"]["egress"] == []
    assert {p["port"] for r in policy["spec"]["ingress"] for p in r["ports"]} == {8000}


# ---------------------------------------------------------------- image build


def _docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True,
                              timeout=30).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@pytest.mark.e2e
@pytest.mark.parametrize("target", TARGETS)
def test_image_builds_and_runs_as_non_root(target):
    if not _docker_available():
        pytest.skip("no Docker daemon: image build not tested")
    tag = f"cancer-alpha-{target}:test"
    start = time.perf_counter()
    build = subprocess.run(["docker", "build", "-f", str(DOCKERFILE), "--target", target,
                            "-t", tag, str(REPO)], capture_output=True, text=True, timeout=3600)
    assert build.returncode == 0, build.stderr[-4000:]
    print(f"{tag} built in {time.perf_counter() - start:.0f} s")

    def run(*args: str) -> str:
        proc = subprocess.run(["docker", "run", "--rm", "--read-only", "--tmpfs", "/tmp",
                               *args], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    assert run("--entrypoint", "id", tag, "-u").strip() != "0"
    assert "coordinator" in run(tag, "--help")
    probe = ("import importlib.util as u, torch; assert u.find_spec('ray') is None; "
             "assert not torch.cuda.is_available(); print(torch.__version__)")
    assert run("--entrypoint", "python", tag, "-c", probe).strip().endswith("+cpu")
    assert run("--entrypoint", "ls", tag, "-A", "/data").strip() == ""
