"""Run control belongs to the coordinator operator.

Real processes on loopback: the coordinator's SuperLink (behind
:mod:`server.coordinator.guard`) and the ``flwr`` CLI used as an outsider holding only
the consortium's CA certificate, and as the operator. The outsider can neither register
a rogue key, nor unregister a real site, nor list, start or stop runs;
``coordinator sync-sites`` makes the SuperLink's nodes equal the PKI's (an extra node
removed, an unregistered site registered again) and says so.

The guard itself (which requests pass) is tested in-process with Starlette's client.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from typer.testing import CliRunner

from common.pki import Pki
from common.processes import free_port, stop_process
from server.cli import coordinator_app
from server.coordinator import CoordinatorConfig, coordinator_env, sync_sites, write_flower_home
from server.coordinator.guard import OperatorGuard, is_same_host, operator_token
from server.coordinator.registry import active_nodes
from server.coordinator.settings import DATABASE, REGISTRY_FILE
from server.coordinator.superlink import start_superlink
from simulations.consortium import make_pki

FLWR = str(Path(sys.executable).parent / "flwr")
TOKEN = "t" * 43


def _guarded(client: tuple[str, int] = ("203.0.113.9", 5000)) -> TestClient:
    async def ok(_request):
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route(p, ok, methods=["POST"]) for p in
                            ("/v1/control/stop-run", "/v1/runtime/acquire-task",
                             "/v1/fleet/pull-messages")])
    return TestClient(OperatorGuard(app, TOKEN), client=client)


def test_guard_requires_the_operator_token_for_run_control():
    outsider = _guarded()
    assert outsider.post("/v1/control/stop-run").status_code == 403
    assert outsider.post("/v1/control/stop-run",
                         headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert outsider.post("/v1/control/stop-run",
                         headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    # Flower's own account routes get no exception either.
    assert outsider.post("/v1/control/get-login-details").status_code == 403


def test_guard_keeps_the_runtime_interface_on_this_host():
    assert _guarded().post("/v1/runtime/acquire-task").status_code == 403
    assert _guarded(("127.0.0.1", 5000)).post("/v1/runtime/acquire-task").status_code == 200
    # Sites' Fleet requests pass (Flower's node authentication judges them).
    assert _guarded().post("/v1/fleet/pull-messages").status_code == 200
    assert is_same_host("10.0.0.5", "10.0.0.5") and not is_same_host("10.0.0.6", "10.0.0.5")
    assert not is_same_host(None, "10.0.0.5") and not is_same_host("testclient", None)


def test_guard_is_outermost_in_flowers_superlink_app_or_nothing_starts(monkeypatch):
    from flwr.superlink import extensions
    from flwr.superlink import main as superlink_app

    from server.coordinator.guard import install_guard

    monkeypatch.setattr(extensions, "get_middleware", extensions.get_middleware)
    install_guard(TOKEN)
    assert superlink_app._get_middleware()[0].cls is OperatorGuard
    # A Flower build whose app ignores the hook: refuse rather than serve unguarded.
    monkeypatch.setattr(superlink_app, "_get_middleware", lambda: [])
    with pytest.raises(SystemExit, match="refusing"):
        install_guard(TOKEN)


def test_operator_token_is_private_and_stable(tmp_path):
    token = operator_token(tmp_path)
    assert len(token) >= 32 and operator_token(tmp_path) == token
    assert (tmp_path / "operator.token").stat().st_mode & 0o777 == 0o600


def test_site_names_come_from_the_registered_keys(tmp_path):
    from server.coordinator.registry import registered_site_names

    run_dir = tmp_path / "state" / "runs" / "r1"
    run_dir.mkdir(parents=True)
    assert registered_site_names(run_dir) == {}
    (tmp_path / "state" / REGISTRY_FILE).write_text(json.dumps(
        {"site-a": {"node_id": "18446744073709551615", "fingerprint": "f"}}))
    assert registered_site_names(run_dir) == {18446744073709551615: "site-a"}


def _outsider_home(root: Path, pki: Pki, address: str) -> dict[str, str]:
    """A Flower CLI configured with nothing but the CA certificate."""
    home = root / "outsider"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "link"\n\n[superlink.link]\naddress = "{address}"\n'
        f"root-certificates = {json.dumps(str(pki.ca_cert))}\n")
    return {**os.environ, "FLWR_HOME": str(home)}


def _flwr(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([FLWR, *args, "--format", "json"], env=env, capture_output=True,
                          text=True, timeout=60, cwd=env["FLWR_HOME"])


def _answer(proc: subprocess.CompletedProcess) -> dict:
    out = proc.stdout
    return json.loads(out[out.index("{"):]) if "{" in out else {}


@pytest.mark.e2e
def test_outsider_cannot_control_runs_and_sync_sites_restores_the_pki_node_set(tmp_path):
    pki = make_pki(tmp_path / "pki", ["site-a"], revoked=["rogue"])
    rogue_key = pki.site_public_key("rogue")  # a key outside the consortium's sites
    cfg = CoordinatorConfig(pki_dir=pki.root, state_dir=tmp_path / "state", host="127.0.0.1",
                            port=free_port())
    write_flower_home(cfg)
    env = coordinator_env(cfg)
    superlink = start_superlink(cfg, env)
    try:
        site_node = sync_sites(cfg, env).nodes["site-a"]

        # The outsider's own Flower CLI with only the CA certificate, as in the attack...
        outsider = _outsider_home(tmp_path, pki, cfg.local_address)
        proc = _flwr(["supernode", "register", str(rogue_key), "link"], outsider)
        refusal = _answer(proc)
        assert refusal.get("success") is False, (proc.stdout, proc.stderr)
        assert "reserved to the coordinator operator" in refusal["error-message"]
        # ...and every other run-control call, by hand over TLS.
        base = f"https://{cfg.local_address}/v1/control"
        with httpx.Client(verify=ssl.create_default_context(cafile=str(pki.ca_cert)),
                          timeout=30) as http:
            for route in ("unregister-node", "start-run", "stop-run", "list-runs",
                          "list-nodes", "register-node", "get-login-details"):
                answer = http.post(f"{base}/{route}", content=b"",
                                   headers={"Authorization": "Bearer guessed"})
                assert answer.status_code == 403, (route, answer.text)

        # The operator's CLI (the coordinator's FLWR_HOME) passes: plant an extra node and
        # take the real site out, as a leaked token or a hand edit would.
        extra = _answer(_flwr(["supernode", "register", str(rogue_key), "consortium"], env))
        assert extra.get("success"), extra
        assert _flwr(["supernode", "unregister", site_node, "consortium"],
                     env).returncode == 0
        result = CliRunner().invoke(coordinator_app, [
            "sync-sites", "--pki", str(pki.root), "--state-dir", str(cfg.state_dir),
            "--host", cfg.host, "--port", str(cfg.port)])
        changed = json.loads(result.stdout[result.stdout.index("{"):])
        # Only the operator's extra node was there to remove: the outsider's never landed.
        assert changed["removed_nodes"] == [str(extra["node-id"])]
        # Flower never takes a key twice: the unregistered site is not "present", it is
        # reported as needing a new key.
        assert changed["kept"] == [] and changed["registered"] == []
        assert "issue-site site-a --force" in changed["refused"]["site-a"]
        assert result.exit_code == 1
        assert json.loads((cfg.state_dir / REGISTRY_FILE).read_text()) == {}
        assert active_nodes(env) == set()
    finally:
        stop_process(superlink)
    # Run state and registrations are the operator's only.
    assert cfg.state_dir.stat().st_mode & 0o777 == 0o700
    for name in (DATABASE, REGISTRY_FILE, "operator.token", "flwr-home/credentials.yaml"):
        assert (cfg.state_dir / name).stat().st_mode & 0o777 == 0o600, name
