"""The coordinator service's console API over a store filled from run directories on
disk (no SuperLink: run control is a recording stand-in), the per-round progress of
``coordinator start``. The real service with two real sites is tested in
test_console_e2e.py (one shared federation)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from common.pki import Pki
from server.console_api.app import create_app
from server.console_api.service import open_state
from server.console_api.state import ConsoleState
from server.console_api.store import RunRow
from server.console_api.templates import Template, save
from server.coordinator.progress import RoundWatcher, round_line
from simulations.consortium import make_pki

SITES = ("site-a", "site-b")


def _round(n: int, f1: float, rejected: list[dict] | None = None) -> dict:
    return {"round": n, "rejected": rejected or [], "train": {"loss": 1.0 / n},
            "sites": [{"site": "site-a", "n_train": 40, "train_loss": 0.9, "epsilon": 0.5 * n},
                      {"site": "site-b", "n_train": 35, "train_loss": 0.8, "epsilon": 0.6 * n}],
            "val": {"f1_macro": f1, "accuracy": f1 + 0.1, "loss": 1.2 - f1}, "seconds": 2.5}


def write_finished_run(runs: Path, name: str) -> Path:
    """A run directory as a finished ``coordinator start`` run leaves it."""
    run = runs / name
    (run / "model").mkdir(parents=True)
    (run / "run-config.toml").write_text('"rounds" = 2\n"dp" = "local"\n"epsilon" = 4.0\n'
                                         '"data" = ""\n')
    rounds = [_round(1, 0.40, [{"site": "site-b", "reason": "update norm 9.1 > 5.0",
                                "node": 7}]), _round(2, 0.55)]
    rounds[1]["sites"] = rounds[1]["sites"][:1]  # site-b was rejected in round 2
    (run / "metrics.json").write_text(json.dumps({
        "rounds": rounds, "best_round": 2,
        "sites": [{"site": "site-a", "n_train": 40, "n_val": 10,
                   "class_counts": {"LumA": 30, "Basal": 10}},
                  {"site": "site-b", "n_train": 35, "n_val": 9,
                   "class_counts": {"LumA": 20, "Basal": 15}}]}))
    (run / "coordinator.json").write_text(json.dumps({"flower_runs": [11], "events": [
        {"time": 1.7e9, "run_id": 11}, {"time": 1.7e9 + 60, "finished": 11,
                                       "status": "finished:completed"}]}))
    model = run / "model"
    (model / "bundle.json").write_text(json.dumps({"label_names": ["Basal", "LumA"],
                                                   "lineage": {"run_id": "x", "round": 2}}))
    (model / "schema.json").write_text(json.dumps({"modalities": {"rna": ["g1", "g2"]}}))
    (model / "weights.pt").write_bytes(b"weights")
    (model / "standardizer.npz").write_bytes(b"stats")
    return run


class RecordingControl:
    """Run control without a SuperLink: records what it was asked; a start writes the
    run's config as the real one does."""

    def __init__(self, state: ConsoleState) -> None:
        self.state, self.calls = state, []

    def start(self, run_id: str, template: Template) -> list[int]:
        self.calls.append(("start", run_id, template.name))
        run = self.state.run_dir(run_id)
        run.mkdir(parents=True)
        (run / "run-config.toml").write_text(f'"rounds" = {template.config["rounds"]}\n')
        return [21]

    def stop(self, run: RunRow) -> None:
        self.calls.append(("stop", run.id))

    def resume(self, run: RunRow) -> list[int]:
        self.calls.append(("resume", run.id))
        return [*run.flower_runs, 22]

    def sync_sites(self) -> dict[str, str]:
        self.calls.append(("sync",))
        return {}

    def online(self) -> dict[str, str | None]:
        return {"site-a": None}


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki") / "pki", SITES)


@pytest.fixture
def service(tmp_path, pki, monkeypatch):
    monkeypatch.setenv("CANCER_ALPHA_CONSOLE_JWT_SECRET", "s" * 48)
    state_dir = tmp_path / "coordinator"
    write_finished_run(state_dir / "runs", "past")
    state = open_state(state_dir, pki.root)
    save(state.templates.directory, Template("tiny", "two rounds", {"rounds": 2}))
    state.control = RecordingControl(state)
    state.poll_interval = 0.01
    client = TestClient(create_app(state, console_dist=tmp_path / "no-dist"))
    tokens = {role: state.tokens.issue(subject, role) for role, subject in
              (("lead", "lena"), ("admin", "ada"), ("site", "site-a"),
               ("researcher", "rita"))}
    yield client, state, tokens
    state.store.close()


def _as(tokens: dict, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens[role]}"}


def _audit(state: ConsoleState, action: str) -> list[dict]:
    return [r.as_dict() for r in state.audit.records() if r.action == action]


def test_tokens_and_roles_decide_access(service):
    client, _, tokens = service
    assert client.get("/api/health").json() == {"status": "ok"}
    assert client.get("/api/sites").status_code == 401
    bad = client.get("/api/sites", headers={"Authorization": "Bearer not-a-jwt"})
    assert bad.status_code == 401 and "token" in bad.json()["detail"]
    assert client.get("/api/me", headers=_as(tokens, "researcher")).status_code == 403
    me = client.get("/api/me", headers=_as(tokens, "site")).json()
    assert me == {"subject": "site-a", "role": "site", "site": "site-a"}
    for path in ("/api/models", "/api/audit", "/api/templates"):
        assert client.get(path, headers=_as(tokens, "site")).status_code == 403, path
    denied = client.post("/api/sites/site-b/revoke", json={"reason": "test"},
                         headers=_as(tokens, "lead"))
    assert denied.status_code == 403 and "admin" in denied.json()["detail"]
    assert client.post("/api/runs", json={"template": "tiny"},
                       headers=_as(tokens, "site")).status_code == 403


def test_sites_show_keys_presence_and_declared_data_and_a_site_sees_only_itself(service):
    client, state, tokens = service
    client.get("/api/runs", headers=_as(tokens, "lead"))  # finds the finished run
    sites = {s["name"]: s for s in client.get("/api/sites", headers=_as(tokens, "lead")).json()}
    assert set(sites) == set(SITES)
    assert sites["site-a"]["status"] == "enabled" and len(sites["site-a"]["fingerprint"]) > 20
    assert sites["site-b"]["data_summary"]["class_counts"] == {"LumA": 20, "Basal": 15}
    from server.console_api.supervisor import SitePoller

    SitePoller(state.control.online, state.store).poll()
    sites = {s["name"]: s for s in client.get("/api/sites", headers=_as(tokens, "lead")).json()}
    assert sites["site-a"]["online"] and sites["site-a"]["last_seen"]
    assert not sites["site-b"]["online"] and sites["site-b"]["last_seen"] is None
    own = client.get("/api/sites", headers=_as(tokens, "site")).json()
    assert [s["name"] for s in own] == ["site-a"]
    overview = client.get("/api/overview", headers=_as(tokens, "lead")).json()
    assert (overview["sites_total"], overview["sites_online"]) == (2, 1)
    assert overview["latest_model"]["run_id"] == "past"


def test_finished_run_detail_has_rounds_epsilon_and_rejections(service):
    client, _, tokens = service
    runs = client.get("/api/runs?status=finished", headers=_as(tokens, "lead")).json()
    assert [r["id"] for r in runs] == ["past"]
    assert runs[0]["rounds_done"] == 2 and runs[0]["rounds_total"] == 2
    assert runs[0]["best_f1_macro"] == pytest.approx(0.55)
    detail = client.get("/api/runs/past", headers=_as(tokens, "lead")).json()
    assert detail["config"]["dp"] == "local" and detail["errors"] == []
    second = detail["rounds"][1]
    assert second["metrics"]["f1_macro"] == pytest.approx(0.55)
    by_site = {s["name"]: s for s in second["sites"]}
    assert by_site["site-a"] == {"name": "site-a", "participated": True,
                                 "epsilon_spent": 1.0, "epsilon_budget": 4.0}
    assert by_site["site-b"]["participated"] is False
    assert detail["rejections"] == [{"round": 1, "site": "site-b",
                                     "reason": "update norm 9.1 > 5.0"}]
    mine = client.get("/api/runs/past", headers=_as(tokens, "site")).json()
    assert {s["name"] for r in mine["rounds"] for s in r["sites"]} == {"site-a"}
    assert mine["rejections"] == []
    assert client.get("/api/runs/nope", headers=_as(tokens, "lead")).status_code == 404
    bad = client.get("/api/runs?status=done", headers=_as(tokens, "lead"))
    assert bad.status_code == 422 and "running" in bad.json()["detail"]


def test_start_stop_resume_are_checked_and_audited(service):
    client, state, tokens = service
    lead = _as(tokens, "lead")
    bad = client.post("/api/runs", json={"template": "tiny", "name": "Bad Name!"}, headers=lead)
    assert bad.status_code == 422 and "run name" in bad.json()["detail"]
    assert client.post("/api/runs", json={"template": "none"}, headers=lead).status_code == 404
    missing = client.post("/api/runs", json={}, headers=lead)
    assert missing.status_code == 422 and "template" in missing.json()["detail"]
    assert client.post("/api/runs", json={"template": "tiny", "name": "past"},
                       headers=lead).status_code == 409
    started = client.post("/api/runs", json={"template": "tiny", "name": "r1"}, headers=lead)
    assert started.status_code == 200, started.text
    assert started.json()["status"] == "running" and started.json()["rounds_total"] == 2
    second = client.post("/api/runs", json={"template": "tiny", "name": "r2"}, headers=lead)
    assert second.status_code == 409 and "r1" in second.json()["detail"]
    assert client.post("/api/runs/r1/resume", headers=lead).status_code == 409
    stopped = client.post("/api/runs/r1/stop", headers=lead).json()
    assert stopped["status"] == "stopped" and stopped["finished_at"]
    resumed = client.post("/api/runs/r1/resume", headers=lead).json()
    assert resumed["status"] == "running" and resumed["flower_runs"] == [21, 22]
    assert [c[0] for c in state.control.calls] == ["start", "stop", "resume"]
    entries = [(e["action"], e["actor"], e["detail"]["run"]) for e in
               client.get("/api/audit?limit=10", headers=lead).json() if e["action"]
               .startswith("run.")]
    assert entries == [("run.resume", "lena", "r1"), ("run.stop", "lena", "r1"),
                       ("run.start", "lena", "r1")]
    # A stale end report of the first submission does not end the resumed run.
    state.run_ended("r1", 21, "finished:stopped")
    assert state.store.run("r1").status == "running"
    state.run_ended("r1", 22, "finished:failed")
    assert state.store.run("r1").status == "failed" and state.store.run("r1").errors


def test_event_stream_sends_rounds_then_the_final_status(service):
    client, _, tokens = service
    with client.stream("GET", f"/api/runs/past/events?token={tokens['lead']}") as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        text = "".join(reply.iter_text())
    events = [block for block in text.split("\n\n") if "event:" in block]
    kinds = [line.split(": ", 1)[1] for e in events for line in e.splitlines()
             if line.startswith("event:")]
    assert kinds == ["round", "round", "status"]
    data = [json.loads(line[6:]) for e in events for line in e.splitlines()
            if line.startswith("data: ")]
    assert [d.get("round") for d in data[:2]] == [1, 2]
    assert data[2]["status"] == "finished"
    assert client.get("/api/runs/past/events").status_code == 401


def test_models_are_registered_from_finished_runs_and_promoted_with_a_reason(service):
    client, state, tokens = service
    lead = _as(tokens, "lead")
    models = client.get("/api/models", headers=lead).json()
    assert [(m["id"], m["run_id"], m["promoted"]) for m in models] == \
        [("cancer-alpha:1", "past", False)]
    blank = client.post("/api/models/cancer-alpha:1/promote", json={"reason": "  "},
                        headers=lead)
    assert blank.status_code == 422 and "reason" in blank.json()["detail"]
    assert client.post("/api/models/cancer-alpha:9/promote", json={"reason": "best"},
                       headers=lead).status_code == 404
    promoted = client.post("/api/models/cancer-alpha:1/promote",
                           json={"reason": "best validation F1"}, headers=lead).json()
    assert promoted["promoted"] and promoted["promotion_reason"] == "best validation F1"
    entry = client.get("/api/audit?action=registry.promote", headers=lead).json()
    assert len(entry) == 1 and entry[0]["actor"] == "lena"
    assert entry[0]["detail"]["reason"] == "best validation F1"
    assert client.get("/api/audit/verify", headers=lead).json()["intact"] is True
    assert _audit(state, "registry.add")[0]["actor"] == "coordinator"


def test_admin_revokes_and_enables_a_site_through_the_pki(service, pki):
    client, state, tokens = service
    admin = _as(tokens, "admin")
    revoked = client.post("/api/sites/site-b/revoke", json={"reason": "key leaked"},
                          headers=admin)
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    assert "site-b" in pki.revoked() and ("sync",) in state.control.calls
    enabled = client.post("/api/sites/site-b/enable", json={"reason": "new key checked"},
                          headers=admin).json()
    assert enabled["status"] == "enabled" and "site-b" not in pki.revoked()
    details = [e["detail"] for e in _audit(state, "site.revoke") + _audit(state, "site.enable")]
    assert [d["reason"] for d in details] == ["key leaked", "new key checked"]
    assert client.post("/api/sites/nobody/revoke", json={"reason": "x"},
                       headers=admin).status_code == 404
    assert client.get("/api/audit/verify", headers=admin).json()["entries"] == 2


def test_audit_chain_verification_reports_a_modified_record(service):
    client, state, tokens = service
    client.post("/api/sites/site-a/revoke", json={"reason": "r"}, headers=_as(tokens, "admin"))
    import sqlite3

    db = sqlite3.connect(state.state_dir / "console" / "registry.db")
    db.execute("DROP TRIGGER audit_log_no_update")
    db.execute("UPDATE audit_log SET actor = 'mallory' WHERE action = 'site.revoke'")
    db.commit()
    db.close()
    result = client.get("/api/audit/verify", headers=_as(tokens, "lead")).json()
    assert result["intact"] is False and "modified" in result["problem"]


def test_console_is_served_when_built_and_explained_when_not(service, tmp_path):
    client, state, _ = service
    missing = client.get("/console/runs")
    assert missing.status_code == 404 and "not built" in missing.json()["detail"]
    dist = tmp_path / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text("<div id=root></div>")
    (dist / "assets" / "app.js").write_text("console.log(1)")
    built = TestClient(create_app(state, console_dist=dist))
    assert built.get("/console/runs/past").text == "<div id=root></div>"  # client route
    assert built.get("/console/assets/app.js").text == "console.log(1)"
    escape = built.get("/console/..%2F..%2F..%2Fpyproject.toml")  # outside dist: not served
    assert escape.text == "<div id=root></div>"


def test_default_template_comes_from_the_run_config(service):
    client, _, tokens = service
    templates = {t["name"]: t for t in
                 client.get("/api/templates", headers=_as(tokens, "lead")).json()}
    from common.config import RunConfig

    assert templates["default"]["config"]["rounds"] == RunConfig().rounds
    assert "out" not in templates["default"]["config"]
    assert templates["tiny"]["config"] == {"rounds": 2}


def test_round_progress_lines_follow_the_run_directory(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoint").mkdir(parents=True)
    lines: list[str] = []
    watcher = RoundWatcher(run, lines.append, rounds_total=3, interval=0.01).start()
    (run / "checkpoint" / "state.json").write_text(json.dumps({"rounds": [_round(1, 0.4)]}))
    deadline = time.monotonic() + 5
    while not lines and time.monotonic() < deadline:
        time.sleep(0.01)
    (run / "checkpoint" / "state.json").write_text(
        json.dumps({"rounds": [_round(1, 0.4), _round(2, 0.5, [{"site": "x", "reason": "r"}])]}))
    watcher.stop()
    assert lines == ["round 1/3: val macro-F1 0.400, val loss 0.800, 2 sites, 2.5 s",
                     "round 2/3: val macro-F1 0.500, val loss 0.700, 2 sites, 1 rejected, "
                     "2.5 s"]
    assert round_line({"round": 4, "failed": True, "rejected": []}) == \
        "round 4: failed (no usable aggregate)"


def test_runs_are_submitted_from_a_staged_copy_of_the_app(tmp_path):
    from server.coordinator.app_stage import app_packages, stage_app
    from server.coordinator.settings import PROJECT_ROOT

    app = tmp_path / "src"
    (app / "pkg" / "node_modules").mkdir(parents=True)
    (app / "pkg" / "mod.py").write_text("x = 1\n")
    (app / "pkg" / "node_modules" / "big.js").write_text("//")
    (app / ".venv").mkdir()
    (app / "docs").mkdir()
    (app / "pyproject.toml").write_text(
        '[tool.flwr.app]\nfab-include = ["pkg/**/*.py", "absent/**/*.py", "top.py"]\n')
    staged = stage_app(app, tmp_path / "staged")
    assert sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*")) == \
        ["pkg", "pkg/mod.py", "pyproject.toml"]
    # the checkout itself: its Flower app's packages, none of .venv, docs or deploy
    assert set(app_packages(PROJECT_ROOT)) == {"client", "common", "server", "simulations",
                                              "strategies"}


def test_the_built_console_holds_no_secret():
    """The bundle served under /console is public: no key, token or secret name in it."""
    import re

    dist = Path(__file__).resolve().parents[1] / "server" / "console_web" / "dist"
    if not (dist / "index.html").is_file():
        pytest.skip("the console is not built (cd server/console_web && npm run build)")
    files = [p for p in dist.rglob("*") if p.is_file()]
    text = "\n".join(p.read_text(errors="replace") for p in files)
    assert any(p.suffix == ".js" for p in files)
    assert "PRIVATE KEY" not in text
    assert re.search(r"eyJ[\w-]{8,}\.[\w-]{8,}\.", text) is None  # a signed JWT
    assert "jwt.secret" not in text and "JWT_SECRET" not in text
