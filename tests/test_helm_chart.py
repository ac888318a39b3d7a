"""deploy/helm: ``helm lint`` and ``helm template`` with Helm's own engine (the Helm v4
library that the helm-python-sdk wheel ships), every rendered manifest validated against
the Kubernetes schemas, and the rendered commands, site.toml, budgets, NetworkPolicies,
HPA and backup CronJobs checked against the real CLI and configuration loader."""

from __future__ import annotations

import shutil
import tomllib
from functools import cache
from pathlib import Path

import pytest
import yaml
from test_deploy_assets import K8S_VERSIONS, _mentioned_command_lines, _parse_cli, _resolve

from common.site_config import parse_site_config

helm = pytest.importorskip("helm_python", reason="install the test extra (helm-python-sdk)")

CHART = Path(__file__).resolve().parents[1] / "deploy" / "helm" / "cancer-alpha"
ALL_OFF = {"coordinator": {"enabled": False}, "inference": {"enabled": False}}
SITE = {**ALL_OFF, "site": {"enabled": True, "id": "hospital-b",
                             "privacy": {"epsilon": 3.5, "delta": 1e-6,
                                         "maxNoiseMultiplier": 6.0}}}
CREATED_SECRETS = {
    "coordinator": {"tls": {"create": True, "caCrt": "CA", "serverCrt": "CRT", "serverKey": "KEY"},
                    "sites": [{"id": "site-a", "publicKey": "ecdsa-sha2-nistp384 AAAA"}]},
    "inference": {"secrets": {"create": True, "jwtSecret": "s" * 32,
                              "databaseUrl": "postgresql+psycopg://u@db/x"},
                  "hpa": {"enabled": False}, "replicas": 3},
}


def _lint(path: Path, values: dict | None = None) -> list[dict]:
    report = helm.lint(str(path), values, strict=True, kube_version="v1.29.0")
    assert not report["errors"], report
    return report["messages"]


@cache
def _render_cached(key: str) -> tuple[dict, ...]:
    values = {"default": {}, "site": SITE, "secrets": CREATED_SECRETS}[key]
    out = helm.Chart.load(str(CHART)).render(values, name="rel", namespace="ns",
                                             is_install=True)
    docs = []
    for name, text in out.items():
        if name.endswith(".txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return tuple(docs)


def render(key: str) -> list[dict]:
    return [dict(d) for d in _render_cached(key)]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def pod_spec(doc: dict) -> dict:
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return doc["spec"]["template"]["spec"]


# ------------------------------------------------------------------- lint and schemas
def test_helm_lint_passes_strict_for_every_component_layout():
    for values in ({}, SITE, CREATED_SECRETS):
        messages = _lint(CHART, values)
        worse = [m for m in messages if m["severity"] >= 2]
        assert not worse, worse


def test_helm_lint_is_real_it_flags_a_broken_chart(tmp_path):
    broken = tmp_path / "cancer-alpha"
    shutil.copytree(CHART, broken)
    path = broken / "templates" / "inference.yaml"
    path.write_text(path.read_text().replace("{{- end }}\n", "", 1))
    report = helm.lint(str(broken), None, strict=True)
    assert report["errors"] or any(m["severity"] == 3 for m in report["messages"])


def test_a_site_release_refuses_the_other_components():
    with pytest.raises(helm.HelmError, match="a site is a release of its own"):
        helm.Chart.load(str(CHART)).render({"site": {"enabled": True}}, name="r",
                                           namespace="n", is_install=True)


def test_created_secrets_need_their_material():
    chart = helm.Chart.load(str(CHART))
    with pytest.raises(helm.HelmError, match=r"coordinator\.tls\.caCrt is required"):
        chart.render({"coordinator": {"tls": {"create": True}}}, name="r", namespace="n")


@pytest.mark.parametrize("bad,where", [
    ({"site": {"privacy": {"epsilon": -1}}}, "/site/privacy/epsilon"),
    ({"site": {"privacy": {"delta": 1.5}}}, "/site/privacy/delta"),
    ({"coordinator": {"budget": {"dp": "loose"}}}, "/coordinator/budget/dp"),
    ({"site": {"id": "Hospital A"}}, "/site/id"),
    ({"backup": {"keep": 0}}, "/backup/keep"),
    ({"inference": {"hpa": {"targetCPUUtilizationPercentage": 170}}},
     "/inference/hpa/targetCPUUtilizationPercentage"),
])
def test_values_schema_refuses_bad_budgets_ids_and_counts(bad, where):
    report = helm.lint(str(CHART), bad, strict=True)
    assert any(where in e for e in report["errors"]), report["errors"]


def test_values_schema_agrees_with_the_code():
    import json

    from common.config import DP_MODES
    from common.pki import SITE_ID

    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]
    assert schema["coordinator"]["properties"]["budget"]["properties"]["dp"]["enum"] == list(
        DP_MODES)
    assert schema["site"]["properties"]["id"]["pattern"] == SITE_ID.pattern


@pytest.mark.parametrize("key", ["default", "site", "secrets"])
def test_rendered_manifests_validate_against_the_kubernetes_schemas(key):
    import kubernetes_validate

    docs = render(key)
    assert docs
    for doc in docs:
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} ({key}) invalid for "
                            f"Kubernetes {version}: {e}")


def test_every_component_renders_what_it_needs():
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in render("default"))
    assert ("StatefulSet", "rel-coordinator") in kinds
    assert ("Deployment", "rel-inference") in kinds
    assert ("HorizontalPodAutoscaler", "rel-inference") in kinds
    assert ("CronJob", "rel-coordinator-backup") in kinds
    assert sum(k == "NetworkPolicy" for k, _ in kinds) == 2
    site = sorted((d["kind"], d["metadata"]["name"]) for d in render("site"))
    assert site == sorted([
        ("ConfigMap", "rel-site-config"), ("PersistentVolumeClaim", "rel-site-state"),
        ("Deployment", "rel-site"), ("NetworkPolicy", "rel-site-isolation"),
        ("PersistentVolumeClaim", "rel-backups"), ("CronJob", "rel-site-backup")])


# ------------------------------------------------------------------- the pods
def test_pods_are_non_root_read_only_and_drop_everything():
    for key in ("default", "site"):
        for doc in render(key):
            if doc["kind"] not in ("Deployment", "StatefulSet", "CronJob"):
                continue
            spec = pod_spec(doc)
            assert spec["securityContext"]["runAsNonRoot"] is True
            assert spec["automountServiceAccountToken"] is False
            for c in spec["containers"]:
                sc = c["securityContext"]
                assert sc["readOnlyRootFilesystem"] is True, doc["metadata"]["name"]
                assert sc["capabilities"]["drop"] == ["ALL"]
                assert c["resources"]["requests"], doc["metadata"]["name"]


def _container(doc: dict) -> dict:
    (c,) = pod_spec(doc)["containers"]
    return c


def _env(c: dict) -> dict[str, str]:
    return {e["name"]: e.get("value", "<secret>") for e in c.get("env", [])}


def test_commands_parse_with_the_real_cli_and_carry_the_budget(monkeypatch):
    from common.config import RunConfig

    docs = render("default")
    (coord,) = by_kind(docs, "StatefulSet")
    c = _container(coord)
    path, params = _parse_cli(["cancer-alpha", *c["args"]], _env(c), monkeypatch)
    assert path == ["coordinator", "start"]
    assert params["keep_alive"] is True and params["port"] == 9092
    assert params["metrics_addr"] == "0.0.0.0"
    from server.cli import parse_run_config

    run_config = parse_run_config(params["run_config"])  # as `coordinator start` reads it
    values = yaml.safe_load((CHART / "values.yaml").read_text())["coordinator"]["budget"]
    assert run_config == {"dp": values["dp"], "epsilon": values["epsilon"],
                          "delta": values["delta"]}
    assert all(isinstance(v, float) for k, v in run_config.items() if k != "dp")
    RunConfig.from_flower({**RunConfig().to_flower(), **run_config})  # accepted as they are
    inference = next(d for d in by_kind(docs, "Deployment")
                     if d["metadata"]["name"] == "rel-inference")
    c = _container(inference)
    path, params = _parse_cli(["cancer-alpha", *c["args"]], _env(c), monkeypatch)
    assert path == ["serve"] and params["port"] == 8000
    assert "replicas" not in inference["spec"]  # the HPA owns the count


def test_site_toml_loads_with_the_site_budget_and_its_mounts():
    docs = render("site")
    (cm,) = by_kind(docs, "ConfigMap")
    raw = tomllib.loads(cm["data"]["site.toml"])
    cfg = parse_site_config(raw, Path("/etc/cancer-alpha"), check_files=False)
    assert cfg.site_id == "hospital-b"
    assert (cfg.privacy.epsilon, cfg.privacy.delta, cfg.privacy.max_noise_multiplier) == (
        3.5, 1e-6, 6.0)
    (site,) = by_kind(docs, "Deployment")
    c = _container(site)
    mounts = {m["mountPath"]: m.get("readOnly", False) for m in c["volumeMounts"]}
    assert c["args"] == ["site", "start", "--config", "/etc/cancer-alpha/site.toml"]
    assert mounts["/data"] is True and mounts["/var/lib/cancer-alpha"] is False
    assert mounts["/etc/cancer-alpha/site.toml"] is True
    for path in (cfg.root_certificates, cfg.private_key, cfg.public_key):
        assert path.parent.as_posix() in mounts
    assert str(cfg.data_dir) in mounts and str(cfg.state_dir) in mounts
    assert site["spec"]["strategy"]["type"] == "Recreate"


# ------------------------------------------------------------------- network
def test_site_may_only_reach_the_coordinator_and_dns():
    (np,) = by_kind(render("site"), "NetworkPolicy")
    assert np["spec"]["podSelector"] == {} and np["spec"]["ingress"] == []
    to_coordinator, dns = np["spec"]["egress"]
    peer = to_coordinator["to"][0]
    assert peer["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "cancer-alpha"}
    assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/component": "coordinator"}
    assert to_coordinator["ports"] == [{"protocol": "TCP", "port": 9092}]
    assert {p["port"] for p in dns["ports"]} == {53}


def test_coordinator_admits_sites_and_prometheus_only():
    docs = render("default")
    (np,) = [d for d in by_kind(docs, "NetworkPolicy") if d["metadata"]["name"] ==
             "rel-coordinator"]
    sites, monitoring = np["spec"]["ingress"]
    assert sites["from"][0]["namespaceSelector"]["matchLabels"] == {"cancer-alpha/role": "site"}
    assert sites["ports"] == [{"protocol": "TCP", "port": 9092}]
    assert monitoring["ports"] == [{"protocol": "TCP", "port": 9100}]
    (coord,) = by_kind(docs, "StatefulSet")
    labels = coord["spec"]["template"]["metadata"]["labels"]
    assert all(labels[k] == v for k, v in np["spec"]["podSelector"]["matchLabels"].items())


# ------------------------------------------------------------------- HPA and backups
def test_hpa_scales_the_inference_deployment_and_can_be_off():
    docs = render("default")
    (hpa,) = by_kind(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "rel-inference"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
    off = render("secrets")
    assert not by_kind(off, "HorizontalPodAutoscaler")
    (inference,) = [d for d in by_kind(off, "Deployment") if d["metadata"]["name"] ==
                    "rel-inference"]
    assert inference["spec"]["replicas"] == 3
    secrets = {d["metadata"]["name"]: d for d in by_kind(off, "Secret")}
    assert set(secrets) == {"rel-coordinator-pki", "rel-inference-secrets"}
    assert "site-a.pub" in secrets["rel-coordinator-pki"]["stringData"]


@pytest.mark.parametrize("key,component", [("default", "coordinator"), ("site", "site")])
def test_backup_cronjob_runs_real_commands_beside_its_component(key, component, monkeypatch):
    docs = render(key)
    (job,) = by_kind(docs, "CronJob")
    spec = pod_spec(job)
    c = _container(job)
    script = c["args"][0]
    lines = _mentioned_command_lines(script)
    assert len(lines) == 2, lines  # create, then verify
    for argv in lines:
        argv = [a.strip('"') for a in argv]
        path, cmd, rest = _resolve(argv)
        ctx = cmd.make_context(" ".join(path), [a.replace("$out", "/backups/x.tar.gz")
                                                for a in rest])
        assert path[-1] in ("create", "verify") and "backup" in path
        if path[-1] == "create":
            assert Path(ctx.params["out"]) == Path("/backups/x.tar.gz")
    mounts = {m["mountPath"]: m.get("readOnly", False) for m in c["volumeMounts"]}
    assert mounts["/var/lib/cancer-alpha"] is True and mounts["/backups"] is False
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"]
              if "persistentVolumeClaim" in v}
    state_claims = ({d["metadata"]["name"] for d in by_kind(docs, "PersistentVolumeClaim")}
                    | {f"state-{s['metadata']['name']}-0" for s in by_kind(docs, "StatefulSet")})
    assert claims["state"] in state_claims and claims["backups"] == "rel-backups"
    affinity = spec["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert affinity[0]["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == (
        component)
    assert "tail -n +15" in script  # keep: 14
    assert job["spec"]["concurrencyPolicy"] == "Forbid"
