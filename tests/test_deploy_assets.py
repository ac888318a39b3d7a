"""Tests for deploy/: Dockerfile lint and structure, Compose, Kubernetes, Grafana.

The assets must match the commands as built: every ``cancer-alpha ...`` command line is
parsed by the real Typer app, every ``CANCER_ALPHA_*`` variable is one the code reads,
every site.toml loads with :mod:`common.site_config`, and the coordinator's PKI directory,
as Compose and Kubernetes assemble it from a freshly generated PKI, is one that
``coordinator start`` accepts (server files, ``sites/<id>/site.pub`` of every site).

Everything here runs offline. Only the image build needs a Docker daemon, and only
that test is skipped without one.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from functools import cache
from pathlib import Path

import click
import kubernetes_validate
import pytest
import typer.main
import yaml
from prometheus_client import generate_latest

from common.pki import (
    Pki,
    check_server_files,
    init_pki,
    issue_site,
    load_private_key,
    load_site_public_key,
)
from common.site_config import parse_site_config

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
# Flower 1.41: one HTTPS port for the Fleet API, the Control API and the ServerApp runtime.
SUPERLINK_PORT, METRICS_PORT = 9092, 9100
APP_DIR = "/opt/cancer-alpha/app"


def _tool(name: str) -> str:
    """A test tool from the venv running pytest, else from PATH; fail when missing."""
    path = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: install the test extra (pip install -e '.[test]')")
    return path


# ---------------------------------------------------------------- the real CLI


@cache
def _cli() -> click.Group:
    from common.cli import build_app

    return typer.main.get_command(build_app())


def _resolve(argv: list[str]) -> tuple[list[str], click.Command, list[str]]:
    """``["cancer-alpha", "coordinator", "start", "--x"]`` -> (["coordinator", "start"],
    the click command, ["--x"]); fails on a command that does not exist."""
    assert argv and argv[0] == "cancer-alpha", argv
    cmd, path, rest = _cli(), [], list(argv[1:])
    while isinstance(cmd, click.Group) and not (rest and rest[0].startswith("-")):
        assert rest, f"{shlex.join(argv)}: incomplete command"
        sub = cmd.get_command(click.Context(cmd), rest[0])
        assert sub is not None, f"{shlex.join(argv)}: no command {' '.join([*path, rest[0]])}"
        path.append(rest.pop(0))
        cmd = sub
    return path, cmd, rest


def _option_names(cmd: click.Command) -> set[str]:
    return {o for p in cmd.params if isinstance(p, click.Option)
            for o in (*p.opts, *p.secondary_opts)} | {"--help"}


def _envvars(cmd: click.Command) -> set[str]:
    out = set()
    for p in cmd.params:
        ev = getattr(p, "envvar", None)
        out.update([ev] if isinstance(ev, str) else ev or [])
    return out


def _parse_cli(argv: list[str], env: dict[str, str],
               monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], dict]:
    """Parse a container's command line as the real CLI does, in the container's
    environment (option values from env vars included); return (command path, params).

    Every ``CANCER_ALPHA_*`` variable set for a ``cancer-alpha`` command must be one it
    reads (an option's env var; for ``serve``, a serving setting)."""
    from server.serving.settings import WORKER_SETTINGS_ENV, env_variables

    path, cmd, rest = _resolve(argv)
    known = _envvars(cmd) | (set(env_variables()) - {WORKER_SETTINGS_ENV}
                             if path == ["serve"] else set())
    ours = {k for k in env if k.startswith("CANCER_ALPHA_")}
    assert ours <= known, f"{' '.join(path)}: unknown variables {sorted(ours - known)}"
    with monkeypatch.context() as m:
        for k in [k for k in os.environ if k.startswith("CANCER_ALPHA_")]:
            m.delenv(k)
        for k, v in env.items():
            m.setenv(k, v)
        try:
            ctx = cmd.make_context(f"cancer-alpha {' '.join(path)}", rest)
        except click.ClickException as e:
            pytest.fail(f"{shlex.join(argv)}: {e.format_message()}")
    # Typer turns values into their Python types when it invokes the command; here the
    # parsed values are click's (Path options stay strings): normalise those.
    paths = {p.name for p in cmd.params if isinstance(p.type, click.Path)}
    return path, {k: Path(v) if k in paths and v is not None else v
                  for k, v in ctx.params.items()}


_MENTION = re.compile(r"(?<!-n )(?<![\w/.-])cancer-alpha((?: +[^\s`;|&)'\\]+)+)")


def _mentioned_command_lines(text: str) -> list[list[str]]:
    """``cancer-alpha ...`` command lines written in a file (code, comments, prose)."""
    out = []
    for m in _MENTION.finditer(text):
        out.append(["cancer-alpha", *m.group(1).split()])
    return out


def test_every_command_line_mentioned_in_deploy_exists():
    """Every ``cancer-alpha ...`` written anywhere in deploy/ (commands, comments, the
    README) names a real command, and each of its options exists on that command."""
    seen = 0
    for path in sorted(DEPLOY.rglob("*")):
        if not path.is_file():
            continue
        for argv in _mentioned_command_lines(path.read_text()):
            _, cmd, rest = _resolve(argv)
            unknown = {w.split("=")[0] for w in rest if w.startswith("-")} - _option_names(cmd)
            assert not unknown, f"{path}: {shlex.join(argv)}: no option {sorted(unknown)}"
            seen += 1
    assert seen >= 10


def test_every_cancer_alpha_variable_in_deploy_is_read_by_the_code():
    """Every ``CANCER_ALPHA_*`` name in deploy/ (manifests, comments, README) is an option's
    env var or a serving setting; ``${CANCER_ALPHA_TAG}`` is Compose's image tag only."""
    from server.serving.settings import env_variables

    def walk(cmd: click.Command) -> set[str]:
        subs = cmd.commands.values() if isinstance(cmd, click.Group) else []
        return _envvars(cmd).union(*(walk(s) for s in subs))

    known = walk(_cli()) | set(env_variables())
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file():
            text = path.read_text()
            for m in re.finditer(r"(\$\{)?\b(CANCER_ALPHA_[A-Z0-9_]*[A-Z0-9])", text):
                if m.group(1) and m.group(2) == "CANCER_ALPHA_TAG":
                    continue
                assert m.group(2) in known, f"{path}: {m.group(2)} is read by nothing"


def test_the_cli_checks_are_not_no_ops(monkeypatch):
    with pytest.raises(AssertionError, match="no command"):
        _resolve(["cancer-alpha", "coordinator", "run"])
    _, cmd, _ = _resolve(["cancer-alpha", "coordinator", "start"])
    assert "--control-port" not in _option_names(cmd) and "--app" in _option_names(cmd)
    with pytest.raises(pytest.fail.Exception, match=r"(?i)no such option"):
        _parse_cli(["cancer-alpha", "coordinator", "start", "--control-port", "9093"], {},
                   monkeypatch)
    with pytest.raises(pytest.fail.Exception, match="CANCER_ALPHA_METRICS_PORT"):
        _parse_cli(["cancer-alpha", "coordinator", "start"],
                   {"CANCER_ALPHA_METRICS_PORT": "metrics"}, monkeypatch)
    with pytest.raises(AssertionError, match="CANCER_ALPHA_CONTROL_PORT"):
        _parse_cli(["cancer-alpha", "coordinator", "start"],
                   {"CANCER_ALPHA_CONTROL_PORT": "9093"}, monkeypatch)
    assert [a[:3] for a in _mentioned_command_lines(
        "kubectl -n cancer-alpha exec x; run `cancer-alpha site start --config s.toml`")] == [
        ["cancer-alpha", "site", "start"]]


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
        if target != "coordinator":
            assert env["FLWR_HOME"] == "/var/lib/cancer-alpha/flwr"
    # the coordinator's FLWR_HOME is where `coordinator start` writes the Flower CLI's
    # connection, so `docker exec ... flwr ls consortium` works in the container
    from server.coordinator import CoordinatorConfig

    env = _env(stages, "coordinator")
    cfg = CoordinatorConfig(pki_dir=Path(env["CANCER_ALPHA_CERTS_DIR"]),
                            state_dir=Path(env["CANCER_ALPHA_STATE_DIR"]))
    assert env["FLWR_HOME"] == cfg.flwr_home.as_posix()


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


def _image_cmd(target: str) -> list[str]:
    """The image's ENTRYPOINT + CMD of ``target``: the full default command line."""
    stages = dockerfile_stages()
    (entry,) = [json.loads(a) for k, a in stages["runtime"] if k == "ENTRYPOINT"]
    (cmd,) = [json.loads(a) for k, a in stages[target] if k == "CMD"]
    return [*entry, *cmd]


def test_targets_start_the_right_command():
    assert _image_cmd("coordinator") == ["cancer-alpha", "coordinator", "start", "--keep-alive"]
    assert _image_cmd("site") == ["cancer-alpha", "site", "start", "--config",
                                  "/etc/cancer-alpha/site.toml"]
    serve = _image_cmd("serve")
    assert serve[:2] == ["cancer-alpha", "serve"] and "8000" in serve
    stages = dockerfile_stages()
    expose = {t: " ".join(a for k, a in stages[t] if k == "EXPOSE").split() for t in TARGETS}
    # one SuperLink port (Fleet + Control API + ServerApp runtime) and the metrics port
    assert expose == {"coordinator": [str(SUPERLINK_PORT), str(METRICS_PORT)], "site": [],
                      "serve": ["8000"]}
    # Compose starts the sites once this check passes (depends_on: service_healthy)
    (health,) = [a for k, a in stages["coordinator"] if k == "HEALTHCHECK"]
    assert f"('127.0.0.1', {SUPERLINK_PORT})" in health
    env = _env(stages, "coordinator")
    assert env["CANCER_ALPHA_METRICS_PORT"] == str(METRICS_PORT)
    assert env["CANCER_ALPHA_METRICS_ADDR"] == "0.0.0.0"  # scraped from outside
    # `coordinator start` sets PROMETHEUS_MULTIPROC_DIR (STATE_DIR/metrics) itself
    assert "PROMETHEUS_MULTIPROC_DIR" not in env


def test_default_commands_parse_with_the_real_cli(monkeypatch):
    """Each image's default command line, with the image's environment, parses with the
    real Typer app; the coordinator's then submits the app copied into the image."""
    stages = dockerfile_stages()
    params = {t: _parse_cli(_image_cmd(t), _env(stages, t), monkeypatch)[1] for t in TARGETS}
    coord = params["coordinator"]
    assert coord["keep_alive"] is True
    assert coord["app_dir"] == Path(APP_DIR)
    assert coord["pki_dir"] == Path("/etc/cancer-alpha/certs")
    assert coord["state_dir"] == Path("/var/lib/cancer-alpha")
    assert (coord["port"], coord["metrics_port"], coord["metrics_addr"]) == (
        SUPERLINK_PORT, METRICS_PORT, "0.0.0.0")
    assert params["site"]["config"] == Path("/etc/cancer-alpha/site.toml")


def test_coordinator_image_carries_the_flower_app():
    """`coordinator start` runs `flwr run APP_DIR`: the image holds the project's source
    tree there (pyproject.toml, README.md, every package), owned by root."""
    stages = dockerfile_stages()
    env = _env(stages, "coordinator")
    assert env["CANCER_ALPHA_APP"] == APP_DIR
    for target in ("site", "serve"):
        assert "CANCER_ALPHA_APP" not in _env(stages, target)
    copied = set()
    for keyword, rest in stages["coordinator"]:
        if keyword == "COPY":
            assert not rest.startswith("--"), f"COPY {rest}: plain copy from the context"
            *sources, dest = rest.split()
            assert dest.rstrip("/") == APP_DIR or dest.startswith(APP_DIR + "/"), dest
            for src in sources:
                target = dest if len(sources) == 1 and not dest.endswith("/") else (
                    f"{dest.rstrip('/')}/{src}")
                assert target == f"{APP_DIR}/{src}", (src, dest)
                copied.add(src)
    assert copied == _app_sources()


def _app_sources() -> set[str]:
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"]["find"]["include"]
    return {"pyproject.toml", "README.md", *(p.rstrip("*") for p in packages)}


@pytest.mark.filterwarnings("ignore:GitWildMatchPattern:DeprecationWarning")
def test_the_copied_app_is_a_flower_app(tmp_path):
    """What the coordinator image holds in APP_DIR builds into a Flower app bundle
    (what `flwr run` submits), read-only as in the image."""
    from flwr.cli.build import build_fab_from_disk

    app = tmp_path / "app"
    app.mkdir()
    for src in _app_sources():
        if (REPO / src).is_dir():
            shutil.copytree(REPO / src, app / src,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(REPO / src, app / src)
    modes = {p: p.stat().st_mode for p in [app, *app.rglob("*")]}
    try:
        for path in modes:
            path.chmod(modes[path] & ~0o222)
        fab = build_fab_from_disk(app)
    finally:
        for path, mode in modes.items():
            path.chmod(mode)
    import io
    import zipfile

    names = set(zipfile.ZipFile(io.BytesIO(fab)).namelist())
    assert {"pyproject.toml", "server/app.py", "client/app.py"} <= names


def test_no_separate_control_or_serverappio_port_anywhere():
    """Flower 1.41 has one SuperLink port: 9093 (Control API) and 9091 (ServerAppIo) of
    older versions must not be exposed, published, admitted or documented in deploy/."""
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file():
            text = path.read_text()
            for port in ("9093", "9091"):
                assert not re.search(rf"\b{port}\b", text), f"{path}: port {port}"


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


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    """A consortium PKI as `cancer-alpha pki init` / `pki issue-site` make it."""
    root = tmp_path_factory.mktemp("pki") / "pki"
    pki = init_pki(root, ["coordinator", "coordinator.cancer-alpha.svc"])
    for site in SITES:
        issue_site(pki, site)
    return pki


def _service_command(name: str) -> tuple[list[str], dict[str, str]]:
    """A Compose service built from our Dockerfile: its full command line and env."""
    service = compose()["services"][name]
    target = service["build"]["target"]
    stages = dockerfile_stages()
    (entry,) = [json.loads(a) for k, a in stages["runtime"] if k == "ENTRYPOINT"]
    cmd = service.get("command") or _image_cmd(target)[len(entry):]
    assert isinstance(cmd, list), f"{name}: command as a list (no shell parsing)"
    env = {**_env(stages, target), **{k: str(v) for k, v in
                                     service.get("environment", {}).items()}}
    return [*entry, *cmd], env


def _materialize(mounts: dict[str, tuple[str, bool]], host_root: Path, root: Path) -> None:
    """Copy the bind mounts under certs/ (from ``host_root`` standing in for the Compose
    directory) to where the container sees them, under ``root``."""
    for target, (source, _ro) in mounts.items():
        host = _host_path(source)
        if host is None or host.relative_to(COMPOSE_DIR).parts[0] != "certs":
            continue
        src = host_root / host.relative_to(COMPOSE_DIR)
        dest = root / target.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dest)
        else:
            shutil.copy(src, dest)


def test_compose_services_and_builds():
    services = compose()["services"]
    assert set(services) == {"coordinator", *SITES, "serve", "prometheus", "grafana"}
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
    for name in ("coordinator", "prometheus", "grafana"):
        for published in services[name]["ports"]:
            assert published.startswith("127.0.0.1:"), (name, published)


def test_compose_commands_parse_with_the_real_cli(monkeypatch):
    services = compose()["services"]
    # the inference service is checked in test_deploy_serving.py
    ours = [n for n, s in services.items() if "build" in s and n != "serve"]
    assert sorted(ours) == sorted(["coordinator", *SITES])
    for name in ours:
        argv, env = _service_command(name)
        path, params = _parse_cli(argv, env, monkeypatch)
        mounts = _mounts(services[name])
        if name == "coordinator":
            assert path == ["coordinator", "start"]
            # one federation, then the SuperLink stays up (restart: unless-stopped)
            assert params["keep_alive"] is True
            assert params["app_dir"] == Path(APP_DIR)  # copied into the image
            assert (params["port"], params["metrics_port"], params["metrics_addr"]) == (
                SUPERLINK_PORT, METRICS_PORT, "0.0.0.0")
            assert params["pki_dir"] == Path("/etc/cancer-alpha/certs")
            assert not mounts[params["state_dir"].as_posix()][1], "state is writable"
        else:
            assert path == ["site", "start"]
            assert params["config"].as_posix() in mounts


def test_compose_publishes_only_the_superlink_port_locally():
    services = compose()["services"]
    # run submission (`flwr run`, Control API) goes through the SuperLink port itself
    assert services["coordinator"]["ports"] == [
        f"127.0.0.1:{SUPERLINK_PORT}:{SUPERLINK_PORT}"]


def test_compose_coordinator_pki_holds_every_site_public_key(pki, tmp_path):
    """The coordinator's mounted PKI directory, assembled from the operator's certs/
    (laid out as deploy/README.md says), is one `coordinator start` accepts: server
    files valid, and sites/<id>/site.pub of each site, matching that site's private key."""
    host = tmp_path / "compose"
    (host / "certs" / "coordinator").mkdir(parents=True)
    for name in ("ca.crt", "server.crt", "server.key"):
        shutil.copy(pki.root / name, host / "certs" / "coordinator" / name)
    for site in SITES:
        shutil.copytree(pki.site_dir(site), host / "certs" / site)
    services = compose()["services"]
    _, env = _service_command("coordinator")
    coord_root = tmp_path / "coordinator"
    coord_mounts = _mounts(services["coordinator"])
    _materialize(coord_mounts, host, coord_root)
    coord_pki = Pki(coord_root / env["CANCER_ALPHA_CERTS_DIR"].lstrip("/"))
    check_server_files(coord_pki.ca_cert, coord_pki.server_cert, coord_pki.server_key)
    assert sorted(coord_pki.authorized_sites()) == sorted(SITES)
    # only public material besides the server's own key: no CA key, no site key
    keys = sorted(p.name for p in coord_root.rglob("*.key"))
    assert keys == ["server.key"], keys
    assert all(ro for target, (_, ro) in coord_mounts.items() if target.startswith("/etc/"))
    for site in SITES:
        site_root = tmp_path / site
        mounts = _mounts(services[site])
        _materialize(mounts, host, site_root)
        cfg_host = _host_path(mounts["/etc/cancer-alpha/site.toml"][0])
        cfg = parse_site_config(tomllib.loads(cfg_host.read_text()), cfg_host.parent,
                                check_files=False)
        private = load_private_key(site_root / cfg.private_key.as_posix().lstrip("/"))
        registered = load_site_public_key(coord_pki.site_public_key(cfg.site_id))
        assert registered.public_numbers() == private.public_key().public_numbers(), site
        assert (site_root / cfg.root_certificates.as_posix().lstrip("/")).read_bytes() == (
            coord_pki.ca_cert.read_bytes())


def test_compose_site_configs_match_their_mounts():
    ids = set()
    for site in SITES:
        svc = compose()["services"][site]
        mounts = _mounts(svc)
        cfg_host = _host_path(mounts["/etc/cancer-alpha/site.toml"][0])
        cfg = tomllib.loads(cfg_host.read_text())
        # the format `site start` reads (unknown sections or keys are errors)
        parse_site_config(cfg, cfg_host.parent, source=cfg_host, check_files=False)
        ids.add(cfg["site"]["id"])
        assert cfg["site"]["id"] == site
        assert cfg["site"]["data-dir"] in mounts
        assert cfg["site"]["state-dir"] in mounts
        assert cfg["coordinator"]["address"] == f"coordinator:{SUPERLINK_PORT}"
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
def rendered(tmp_path_factory, pki) -> dict[str, list[dict]]:
    """Every kustomization entry point rendered by `kubectl kustomize`, offline.

    Rendered in a copy of deploy/k8s where each secretGenerator file exists: the
    coordinator's and the sites' from a PKI made by `pki init` / `pki issue-site` (the
    real certificates are the operator's and never in the repository).
    """
    kubectl = _tool("kubectl")
    root = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, root)
    out = {}
    for entry in K8S_ENTRY_POINTS:
        kustomization = yaml.safe_load((root / entry / "kustomization.yaml").read_text())
        for gen in kustomization.get("secretGenerator", []):
            for spec in gen["files"]:
                f = spec.split("=", 1)[-1]  # "key=path" or "path"
                assert f.startswith("certs/"), f"{entry}: secrets come from certs/ only"
                dest = root / entry / f
                dest.parent.mkdir(parents=True, exist_ok=True)
                rel = Path(f).relative_to("certs")
                if entry == "coordinator":  # certs/ mirrors the coordinator's PKI directory
                    source = pki.root / rel
                elif entry.startswith("site/overlays/"):  # a site's bundle
                    source = pki.site_dir(Path(entry).name) / rel
                else:
                    source = None
                if source is not None:
                    assert source.is_file(), f"{entry}: {f} is not what `pki` makes"
                    shutil.copy(source, dest)
                else:
                    dest.write_text(f"test material for {f}\n")
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


def test_coordinator_admits_sites_and_prometheus_only(rendered):
    coordinator = rendered["coordinator"]
    (policy,) = _of_kind(coordinator, "NetworkPolicy")
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"].items() <= _pod_specs_labels(coordinator).items()
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
    by_port = {}
    for rule in spec["ingress"]:
        (port,) = rule["ports"]
        assert port["port"] not in by_port, "one rule per port"
        by_port[port["port"]] = rule["from"]
    # 9092 carries the Control API too (no account authentication): sites only
    assert by_port == {
        SUPERLINK_PORT: [{"namespaceSelector": {"matchLabels": {"cancer-alpha/role": "site"}}}],
        METRICS_PORT: [{"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": "monitoring"}}}],
    }
    assert [p["port"] for r in spec["egress"] for p in r["ports"]] == [53, 53]
    (service,) = _of_kind(coordinator, "Service")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {
        "superlink": SUPERLINK_PORT, "metrics": METRICS_PORT}
    (workload,) = _of_kind(coordinator, "StatefulSet")
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"superlink": SUPERLINK_PORT, "metrics": METRICS_PORT}
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(ports)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["tcpSocket"]["port"] == "superlink"
    annotations = workload["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(METRICS_PORT)
    # every site dials exactly this Service
    address = (f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc:"
               f"{SUPERLINK_PORT}")
    for site in SITES:
        (cm,) = _of_kind(rendered[f"site/overlays/{site}"], "ConfigMap")
        cfg = tomllib.loads(cm["data"]["site.toml"])
        assert cfg["site"]["id"] == site
        assert cfg["coordinator"]["address"] == address


def _container_env(container: dict, image_target: str) -> dict[str, str]:
    """The container's environment: the image's ENV, then the manifest's env (values from
    Secrets stand in as placeholders)."""
    env = dict(_env(dockerfile_stages(), image_target))
    for var in container.get("env", []):
        env[var["name"]] = var.get("value", f"<{var['name']} from a Secret>")
    return env


def _k8s_command(container: dict) -> list[str]:
    (entry,) = [json.loads(a) for k, a in dockerfile_stages()["runtime"] if k == "ENTRYPOINT"]
    return [*container.get("command", entry), *container["args"]]


def test_k8s_commands_parse_with_the_real_cli(rendered, monkeypatch):
    for resources in rendered.values():
        (spec,) = _pod_specs(resources)
        (container,) = spec["containers"]
        target = container["image"].split(":")[0].removeprefix("cancer-alpha-")
        assert target in TARGETS, container["image"]
        argv, env = _k8s_command(container), _container_env(container, target)
        path, params = _parse_cli(argv, env, monkeypatch)
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        if target == "coordinator":
            assert path == ["coordinator", "start"]
            # a long-running service: one federation, then the SuperLink stays up
            assert params["keep_alive"] is True
            assert params["app_dir"] == Path(APP_DIR)  # copied into the image
            assert (params["port"], params["metrics_port"], params["metrics_addr"]) == (
                SUPERLINK_PORT, METRICS_PORT, "0.0.0.0")
            assert mounts[params["pki_dir"].as_posix()]["readOnly"] is True
            assert not mounts[params["state_dir"].as_posix()].get("readOnly")
        elif target == "site":
            assert path == ["site", "start"]
            assert params["config"].as_posix() in mounts
        else:
            from server.serving.settings import ServingSettings

            assert path == ["serve"]
            settings = ServingSettings.load(env={k: v for k, v in env.items()
                                                 if k.startswith("CANCER_ALPHA_")})
            assert settings.model == "/models/current"
            assert settings.auth.secret and settings.database_url.startswith("<")


def _secret_volume_files(resources: list[dict], volume_name: str) -> tuple[str, dict]:
    """(mount path, {relative path: bytes}) of a Secret volume as the pod sees it."""
    (spec,) = _pod_specs(resources)
    (volume,) = [v for v in spec["volumes"] if v["name"] == volume_name]
    (mount,) = [m for c in spec["containers"] for m in c["volumeMounts"]
                if m["name"] == volume_name]
    assert "subPath" not in mount
    secrets = {s["metadata"]["name"]: s for s in _of_kind(resources, "Secret")}
    data = {k: base64.b64decode(v) for k, v in
            secrets[volume["secret"]["secretName"]]["data"].items()}
    items = volume["secret"].get("items")
    if items is None:
        return mount["mountPath"], data
    assert {i["key"] for i in items} == set(data), "every key of the Secret is mounted"
    return mount["mountPath"], {i["path"]: data[i["key"]] for i in items}


def test_k8s_coordinator_pki_holds_every_site_public_key(rendered, tmp_path, monkeypatch):
    """The coordinator's Secret volume is a PKI directory `coordinator start` accepts:
    server files valid, and sites/<id>/site.pub of each site (flat Secret keys mapped back
    by `items`), the public half of that site's own key."""
    coordinator = rendered["coordinator"]
    (container,) = _pod_specs(coordinator)[0]["containers"]
    env = _container_env(container, "coordinator")
    _, params = _parse_cli(_k8s_command(container), env, monkeypatch)
    mount_path, files = _secret_volume_files(coordinator, "certs")
    assert Path(mount_path) == params["pki_dir"]
    assert all("/" not in key for s in _of_kind(coordinator, "Secret") for key in s["data"])
    root = tmp_path / "coordinator-pki"
    for rel, content in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(content)
    coord_pki = Pki(root)
    check_server_files(coord_pki.ca_cert, coord_pki.server_cert, coord_pki.server_key)
    assert sorted(coord_pki.authorized_sites()) == sorted(SITES)
    assert sorted(files) == sorted(["ca.crt", "server.crt", "server.key",
                                    *(f"sites/{s}/site.pub" for s in SITES)])
    for site in SITES:
        resources = rendered[f"site/overlays/{site}"]
        (cm,) = _of_kind(resources, "ConfigMap")
        cfg = parse_site_config(tomllib.loads(cm["data"]["site.toml"]), Path("/"),
                                check_files=False)
        site_mount, site_files = _secret_volume_files(resources, "certs")
        site_root = tmp_path / site
        for rel, content in site_files.items():
            (site_root / rel).parent.mkdir(parents=True, exist_ok=True)
            (site_root / rel).write_bytes(content)
        key = load_private_key(site_root / cfg.private_key.relative_to(site_mount))
        registered = load_site_public_key(coord_pki.site_public_key(cfg.site_id))
        assert registered.public_numbers() == key.public_key().public_numbers(), site
        assert (site_root / cfg.root_certificates.relative_to(site_mount)).read_bytes() == (
            coord_pki.ca_cert.read_bytes())


def test_k8s_site_configs_load(rendered):
    for site in SITES:
        resources = rendered[f"site/overlays/{site}"]
        (cm,) = _of_kind(resources, "ConfigMap")
        cfg = parse_site_config(tomllib.loads(cm["data"]["site.toml"]), Path("/"),
                                check_files=False)
        (spec,) = _pod_specs(resources)
        mounts = {m["mountPath"]: m for c in spec["containers"] for m in c["volumeMounts"]}
        assert mounts[cfg.data_dir.as_posix()]["readOnly"] is True
        assert not mounts[cfg.state_dir.as_posix()].get("readOnly")
        for path in (cfg.root_certificates, cfg.private_key, cfg.public_key):
            assert path.parent.as_posix() in mounts, path


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
    # Out: DNS and the registry / audit-log database only.
    egress_ports = sorted((p["protocol"], p["port"]) for rule in policy["spec"]["egress"]
                          for p in rule["ports"])
    assert egress_ports == [("TCP", 53), ("TCP", 5432), ("UDP", 53)]
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
