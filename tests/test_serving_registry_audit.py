"""Model registry (lineage, versions, promotion) and the hash-chained audit log (tamper
detection), through the Python API and the commands."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from test_serving_helpers import make_bundle, make_settings, open_registry
from typer.testing import CliRunner

from server.serving.__main__ import app as cli
from server.serving.audit_log import AuditLog, record_hash
from server.serving.database import open_database
from server.serving.registry import Actor, RegistryError, verify_bundle

ADMIN = Actor("alice", "admin")


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("runs")
    return [make_bundle(root / f"run-{seed}", seed=seed) for seed in (0, 1)]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"CANCER_ALPHA_DATABASE_URL": f"sqlite:///{tmp_path / 'serving.db'}"}


def db_file(settings) -> str:
    return settings.database_url.removeprefix("sqlite:///")


def tamper(path: str, sql: str, *args) -> None:
    """What an attacker with write access to the database file can do: drop the
    append-only triggers, then rewrite history."""
    con = sqlite3.connect(path)
    con.execute("DROP TRIGGER IF EXISTS audit_log_no_update")
    con.execute("DROP TRIGGER IF EXISTS audit_log_no_delete")
    con.execute(sql, args)
    con.commit()
    con.close()


def test_registry_records_lineage_and_promotion_archives_previous(tmp_path, run_dirs) -> None:
    registry = open_registry(make_settings(tmp_path))
    first = registry.add(run_dirs[0], name="brca", actor=ADMIN)
    second = registry.add(run_dirs[1] / "model", name="brca", actor=ADMIN)  # bundle dir too
    assert (first.ref, second.ref) == ("brca:1", "brca:2")
    assert first.stage == "candidate"
    info = first.as_dict()
    assert info["run_id"] == "run-0" and info["round"] == 3 and info["strategy"] == "fedavg"
    assert info["dp"] == "local" and info["per_site_epsilon"] == {"site-a": 2.5, "site-b": 3.0}
    assert info["data_fingerprints"] == {"/data/site-a": {"rna.csv": "0" * 64}}
    assert info["metrics"]["test"]["f1_macro"] == 0.5
    assert info["modalities"] == {"rna": 6, "meth": 4, "clin": 3}
    assert info["created_at"].endswith("+00:00") and len(info["bundle_sha256"]) == 64

    registry.promote("brca:1", actor=ADMIN)
    registry.promote("brca:2", actor=Actor("bob", "lead"), request_id="req-42")
    stages = {r.ref: r.stage for r in registry.models()}
    assert stages == {"brca:1": "archived", "brca:2": "production"}
    assert registry.resolve("production", "brca").ref == "brca:2"
    assert registry.resolve("brca:production", "other").ref == "brca:2"

    last = registry.audit.records()[-1]
    assert (last.action, last.actor, last.role, last.model_id, last.request_id) == (
        "registry.promote", "bob", "lead", "brca:2", "req-42")
    assert last.as_dict()["detail"] == {"from": "candidate", "to": "production",
                                        "archived": ["brca:1"]}
    assert registry.audit.verify().ok

    with pytest.raises(RegistryError, match="no model brca:9"):
        registry.promote("brca:9", actor=ADMIN)
    with pytest.raises(RegistryError, match="NAME:VERSION"):
        registry.get("brca")
    with pytest.raises(RegistryError, match="stage 'live'"):
        registry.promote("brca:1", stage="live", actor=ADMIN)
    with pytest.raises(RegistryError, match="no production model named 'other'"):
        registry.production("other")


def test_changed_bundle_files_are_refused(tmp_path, run_dirs) -> None:
    import shutil

    run = shutil.copytree(run_dirs[0], tmp_path / "copy")
    registry = open_registry(make_settings(tmp_path))
    rec = registry.add(run, name="m", actor=ADMIN)
    assert verify_bundle(rec) == run / "model"
    with (run / "model" / "weights.pt").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(RegistryError, match="changed since registration"):
        verify_bundle(rec)


def test_commands_add_list_promote_show_and_verify(env, run_dirs) -> None:
    runner = CliRunner()
    out = runner.invoke(cli, ["registry", "add", str(run_dirs[0]), "--name", "brca",
                              "--actor", "carol"], env=env)
    assert out.exit_code == 0, out.output
    assert "brca:1" in out.stdout
    out = runner.invoke(cli, ["registry", "promote", "brca:1"], env=env)
    assert out.exit_code == 0, out.output
    out = runner.invoke(cli, ["registry", "list", "--json"], env=env)
    assert '"stage": "production"' in out.stdout
    out = runner.invoke(cli, ["registry", "show", "brca:1"], env=env)
    assert '"run_id": "run-0"' in out.stdout
    out = runner.invoke(cli, ["registry", "show", "brca:7"], env=env)
    assert out.exit_code == 2 and "no model brca:7" in out.output
    out = runner.invoke(cli, ["audit", "verify", "--json"], env=env)
    assert out.exit_code == 0, out.output
    assert '"checked": 2' in out.stdout  # registration and promotion
    records = AuditLog(open_database(env["CANCER_ALPHA_DATABASE_URL"])[1]).records()
    actors = [(r.actor, r.action) for r in records]
    assert actors == [("cli:carol", "registry.add"), (f"cli:{_user()}", "registry.promote")]


def _user() -> str:
    import getpass

    return getpass.getuser()


def _filled_log(tmp_path: Path, n: int = 6, key: str = "") -> tuple[AuditLog, str]:
    settings = make_settings(tmp_path)
    _, sessions = open_database(settings.database_url)
    log = AuditLog(sessions, key)
    for i in range(n):
        log.append(actor=f"user{i}", role="researcher", action="predict", model_id="m:1",
                   request_id=f"req-{i}", detail={"patients": i + 1})
    return log, db_file(settings)


def test_modified_record_is_detected_and_named(tmp_path, env) -> None:
    log, path = _filled_log(tmp_path)
    assert log.verify().ok and log.verify().checked == 6
    tamper(path, "UPDATE audit_log SET actor = 'someone-else' WHERE seq = 3")
    result = log.verify()
    assert not result.ok
    assert result.problems == ["record 3: content does not match its hash (modified)"]
    out = CliRunner().invoke(cli, ["audit", "verify"], env=env)
    assert out.exit_code == 1
    assert "record 3" in out.output and "modified" in out.output


def test_deleted_record_is_detected_and_named(tmp_path) -> None:
    log, path = _filled_log(tmp_path)
    tamper(path, "DELETE FROM audit_log WHERE seq = 4")
    problems = log.verify().problems
    assert any("record 4 missing" in p and "deleted" in p for p in problems)
    assert any(p.startswith("record 5: link to the previous record is broken") for p in problems)


def test_truncation_is_detected_against_a_noted_head(tmp_path) -> None:
    log, path = _filled_log(tmp_path)
    head = log.verify().head
    assert head[0] == 6
    tamper(path, "DELETE FROM audit_log WHERE seq >= 5")
    assert log.verify().ok  # the remaining chain is consistent ...
    result = log.verify(expect_head=head)  # ... but shorter than the head noted earlier
    assert not result.ok and "records 5..6 missing" in result.problems[0]


def test_rewritten_chain_is_detected_with_an_audit_key(tmp_path) -> None:
    key = "k" * 40
    log, path = _filled_log(tmp_path, key=key)
    assert log.verify().ok
    # The attacker edits record 2 and recomputes every later hash, but without the key.
    con = sqlite3.connect(path)
    con.execute("DROP TRIGGER audit_log_no_update")
    rows = con.execute("SELECT seq, ts, actor, role, action, model_id, request_id, detail "
                       "FROM audit_log ORDER BY seq").fetchall()
    prev = "0" * 64
    for seq, ts, actor, role, action, model_id, request_id, detail in rows:
        if seq == 2:
            actor = "innocent"
        digest = record_hash(None, seq=seq, ts=ts, actor=actor, role=role, action=action,
                             model_id=model_id, request_id=request_id, detail=detail,
                             prev_hash=prev)
        con.execute("UPDATE audit_log SET actor=?, prev_hash=?, hash=? WHERE seq=?",
                    (actor, prev, digest, seq))
        prev = digest
    con.commit()
    con.close()
    assert AuditLog(log._sessions).verify().ok  # an unkeyed chain cannot tell ...
    problems = log.verify().problems  # ... the keyed one can
    assert problems and all("modified" in p for p in problems)
    assert problems[0].startswith("record 1:")


def test_audit_log_is_append_only_and_concurrent_appends_chain(tmp_path) -> None:
    from sqlalchemy import text
    from sqlalchemy.exc import DatabaseError

    settings = make_settings(tmp_path)
    engine, sessions = open_database(settings.database_url)
    log = AuditLog(sessions)
    log.append(actor="a", role="admin", action="x")
    with pytest.raises(DatabaseError, match="append-only"), engine.begin() as conn:
        conn.execute(text("UPDATE audit_log SET actor = 'b'"))
    with pytest.raises(DatabaseError, match="append-only"), engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_log"))

    # Two "workers" with their own engines append at once: one unbroken chain results.
    logs = [AuditLog(open_database(settings.database_url)[1]) for _ in range(2)]

    def work(k: int) -> None:
        for i in range(25):
            logs[k].append(actor=f"w{k}", role="researcher", action="predict",
                           request_id=f"{k}-{i}")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = log.verify()
    assert result.ok, result.problems
    assert result.checked == 51 and result.head[0] == 51
