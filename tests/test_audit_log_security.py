"""The audit log against a writer without its key and against truncation.

* a process without the audit key (or with another key) cannot append to a keyed log,
  and a keyed process cannot append to an unkeyed one: refused with a clear error,
  nothing written; ``serve`` refuses to start that way;
* the anchor file (signed newest head, kept apart from the database) reveals deleted
  newest records and an emptied table without ``--expect-head``; a deleted or forged
  anchor is named too; ``audit verify`` reports the anchor.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from test_serving_helpers import make_settings
from typer.testing import CliRunner

from server.serving.__main__ import app as cli
from server.serving.audit_anchor import AuditAnchor
from server.serving.audit_log import AuditKeyError, AuditLog, open_audit_log
from server.serving.database import open_database

KEY = "k" * 40


def _log(tmp_path: Path, key: str = KEY, n: int = 5) -> tuple[AuditLog, Path, Path]:
    settings = make_settings(tmp_path, audit_key=key)
    _, sessions = open_database(settings.database_url)
    log = open_audit_log(sessions, settings)
    for i in range(n):
        log.append(actor=f"user{i}", role="researcher", action="predict",
                   detail={"patients": i + 1})
    return log, Path(settings.database_url.removeprefix("sqlite:///")), log.anchor_path


def _reopen(db: Path, key: str, anchor: Path | None) -> AuditLog:
    _, sessions = open_database(f"sqlite:///{db}")
    return AuditLog(sessions, key, anchor)


def _delete(db: Path, where: str) -> None:
    """An attacker with write access to the database file."""
    con = sqlite3.connect(db)
    con.execute("DROP TRIGGER IF EXISTS audit_log_no_delete")
    con.execute(f"DELETE FROM audit_log {where}")
    con.commit()
    con.close()


def _count(db: Path) -> int:
    with sqlite3.connect(db) as con:
        return con.execute("SELECT count(*) FROM audit_log").fetchone()[0]


def test_writer_without_the_key_cannot_append_to_a_keyed_log(tmp_path):
    log, db, anchor = _log(tmp_path)
    keyless = _reopen(db, "", anchor)
    with pytest.raises(AuditKeyError, match=r"keyed .* no audit key"):
        keyless.append(actor="mallory", role="admin", action="registry.promote")
    with pytest.raises(AuditKeyError, match="not the log's"):
        _reopen(db, "x" * 40, anchor).append(actor="mallory", role="admin", action="x")
    with pytest.raises(AuditKeyError):
        keyless.check_writable()
    assert _count(db) == 5 and log.verify().ok


def test_keyed_writer_cannot_extend_an_unkeyed_log(tmp_path):
    _, db, anchor = _log(tmp_path, key="")
    with pytest.raises(AuditKeyError, match="started without a key"):
        _reopen(db, KEY, anchor).append(actor="a", role="admin", action="x")
    assert _count(db) == 5


def test_serve_refuses_to_start_without_the_logs_key(tmp_path):
    from server.serving.cli import _check_audit

    _, db, _ = _log(tmp_path)
    with pytest.raises(AuditKeyError):  # serve's start-up check, before any worker
        _check_audit(make_settings(tmp_path, database_url=f"sqlite:///{db}"))
    _check_audit(make_settings(tmp_path, database_url=f"sqlite:///{db}", audit_key=KEY))


def test_dropped_tail_is_detected_without_an_expected_head(tmp_path):
    log, db, anchor = _log(tmp_path)
    assert json.loads(anchor.read_text())["seq"] == 5
    assert anchor.stat().st_mode & 0o777 == 0o600
    _delete(db, "WHERE seq >= 4")
    result = log.verify()
    assert not result.ok
    assert "records 4..5 missing" in result.problems[0] and "truncated" in result.problems[0]
    assert result.anchor == "record 5 (signed)"


def test_emptied_table_is_detected(tmp_path):
    log, db, _ = _log(tmp_path)
    _delete(db, "")
    result = log.verify()
    assert result.checked == 0 and not result.ok
    assert "records 1..5 missing" in result.problems[0]


def test_deleted_or_forged_anchor_is_named(tmp_path):
    log, db, anchor = _log(tmp_path)
    _delete(db, "WHERE seq = 5")
    forged = AuditAnchor.sign(None, 4, "0" * 64)  # no key: cannot sign for this log
    anchor.write_text(json.dumps({"seq": forged.seq, "hash": forged.hash, "mac": forged.mac}))
    assert any("not signed with this audit key" in p for p in log.verify().problems)
    anchor.unlink()
    assert any("anchor" in p and "missing" in p for p in log.verify().problems)


def test_anchor_follows_appends_in_a_callers_transaction(tmp_path):
    log, _, anchor = _log(tmp_path, n=1)
    with log._sessions() as session, session.begin():
        log.append(actor="a", role="admin", action="registry.add", session=session)
    assert json.loads(anchor.read_text())["seq"] == 2
    with log._sessions() as session:
        with session.begin():
            log.append(actor="a", role="admin", action="registry.add", session=session)
            session.rollback()
        assert json.loads(anchor.read_text())["seq"] == 2  # nothing committed, no move
        with session.begin():  # the same session commits something else later
            pass
    assert json.loads(anchor.read_text())["seq"] == 2
    log.append(actor="b", role="admin", action="x")  # takes seq 3, the rolled-back number
    assert json.loads(anchor.read_text())["seq"] == 3
    assert log.verify().ok


def test_verify_command_reports_the_anchor(tmp_path):
    _, db, _ = _log(tmp_path)
    env = {"CANCER_ALPHA_DATABASE_URL": f"sqlite:///{db}", "CANCER_ALPHA_AUDIT_KEY": KEY}
    out = CliRunner().invoke(cli, ["audit", "verify", "--json"], env=env)
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["anchor"] == "record 5 (signed)"
    _delete(db, "WHERE seq = 5")
    out = CliRunner().invoke(cli, ["audit", "verify"], env=env)
    assert out.exit_code == 1 and "truncated" in out.output


def test_missing_key_or_anchor_is_warned_about(tmp_path, caplog):
    settings = make_settings(tmp_path)
    _, sessions = open_database(settings.database_url)
    with caplog.at_level("WARNING", logger="server.serving.audit_log"):
        open_audit_log(sessions, settings)
    assert "no audit key" in caplog.text and "no audit anchor" not in caplog.text
    caplog.clear()
    settings = make_settings(tmp_path, audit_key=KEY, database_url="sqlite://")
    _, sessions = open_database(settings.database_url)
    with caplog.at_level("WARNING", logger="server.serving.audit_log"):
        open_audit_log(sessions, settings)
    assert "no audit anchor" in caplog.text and "no audit key" not in caplog.text


def test_a_log_emptied_with_its_anchor_is_caught_by_the_registry_beside_it(tmp_path):
    from test_serving_helpers import make_bundle

    from server.serving.registry import Actor, Registry

    settings = make_settings(tmp_path, audit_key=KEY)
    _, sessions = open_database(settings.database_url)
    ref = Registry(sessions, open_audit_log(sessions, settings)).add(
        make_bundle(tmp_path / "run"), name="m", actor=Actor("admin", "admin")).ref
    db = Path(settings.database_url.removeprefix("sqlite:///"))
    env = {"CANCER_ALPHA_DATABASE_URL": settings.database_url, "CANCER_ALPHA_AUDIT_KEY": KEY}
    assert CliRunner().invoke(cli, ["audit", "verify"], env=env).exit_code == 0
    _delete(db, "")
    for anchor in tmp_path.rglob("*anchor*"):
        anchor.unlink()
    out = CliRunner().invoke(cli, ["audit", "verify", "--json"], env=env)
    assert out.exit_code == 1
    report = json.loads(out.stdout)
    assert report["checked"] == 0
    assert any(ref in p and "no record of their registration" in p for p in report["problems"])
