"""The console's durable store (SQLite, WAL): what the coordinator service knows about
sites and runs between restarts.

``sites``: one row per PKI site key (fingerprint, revoked) with what the SuperLink and
the runs told about it (online, last seen, declared data summary). ``runs``: one row
per run the service started or found in ``STATE_DIR/runs`` (template, status, times,
the Flower run ids submitted for it, errors). The model registry and the audit log
live in the serving database beside it (:mod:`server.serving.registry`).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RUN_STATUSES = ("running", "finished", "stopped", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sites (
    name TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0,
    online INTEGER NOT NULL DEFAULT 0,
    last_seen TEXT,
    data_summary TEXT,
    registration_problem TEXT
);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    template TEXT,
    status TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    flower_runs TEXT NOT NULL DEFAULT '[]',
    errors TEXT NOT NULL DEFAULT '[]'
);
"""


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class SiteRow:
    name: str
    fingerprint: str
    revoked: bool = False
    online: bool = False
    last_seen: str | None = None
    data_summary: dict | None = None
    registration_problem: str | None = None  # why the SuperLink does not accept its key


@dataclass
class RunRow:
    id: str
    template: str | None
    status: str
    started_at: str
    finished_at: str | None = None
    flower_runs: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class ConsoleStore:
    """Sites and runs in one SQLite file; safe to share between threads."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.touch(mode=0o600, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None,
                                   timeout=15)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _run(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # --- sites ---------------------------------------------------------------------------
    def sites(self) -> list[SiteRow]:
        return [_site(r) for r in self._run("SELECT * FROM sites ORDER BY name")]

    def site(self, name: str) -> SiteRow | None:
        rows = self._run("SELECT * FROM sites WHERE name = ?", (name,))
        return _site(rows[0]) if rows else None

    def set_keys(self, keys: dict[str, tuple[str, bool]]) -> None:
        """Make the site rows equal the PKI's keys: ``{name: (fingerprint, revoked)}``;
        what was observed about a kept site stays."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                known = {r["name"] for r in self._db.execute("SELECT name FROM sites")}
                for name in known - set(keys):
                    self._db.execute("DELETE FROM sites WHERE name = ?", (name,))
                for name, (fingerprint, revoked) in keys.items():
                    self._db.execute(
                        "INSERT INTO sites (name, fingerprint, revoked) VALUES (?, ?, ?) "
                        "ON CONFLICT(name) DO UPDATE SET fingerprint = excluded.fingerprint, "
                        "revoked = excluded.revoked", (name, fingerprint, int(revoked)))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def update_site(self, name: str, **values: Any) -> None:
        """Set columns of one site (``online``, ``last_seen``, ``data_summary``, ...)."""
        allowed = {"online", "last_seen", "data_summary", "registration_problem", "revoked"}
        if not values or set(values) - allowed:
            raise ValueError(f"site columns: {sorted(allowed)}")
        cols = ", ".join(f"{k} = ?" for k in values)
        args = tuple(_encode(values[k]) for k in values)
        self._run(f"UPDATE sites SET {cols} WHERE name = ?", (*args, name))

    # --- runs ----------------------------------------------------------------------------
    def runs(self, status: str | None = None) -> list[RunRow]:
        if status is None:
            rows = self._run("SELECT * FROM runs ORDER BY started_at DESC, id")
        else:
            rows = self._run("SELECT * FROM runs WHERE status = ? ORDER BY started_at DESC, id",
                             (status,))
        return [_run(r) for r in rows]

    def run(self, run_id: str) -> RunRow | None:
        rows = self._run("SELECT * FROM runs WHERE id = ?", (run_id,))
        return _run(rows[0]) if rows else None

    def add_run(self, row: RunRow) -> None:
        self._run("INSERT INTO runs (id, template, status, started_at, finished_at, "
                  "flower_runs, errors) VALUES (?, ?, ?, ?, ?, ?, ?)",
                  (row.id, row.template, row.status, row.started_at, row.finished_at,
                   json.dumps(row.flower_runs), json.dumps(row.errors)))

    def update_run(self, run_id: str, **values: Any) -> None:
        """Set columns of one run (``status``, ``finished_at``, ``flower_runs``, ...)."""
        allowed = {"status", "finished_at", "flower_runs", "errors", "template"}
        if not values or set(values) - allowed:
            raise ValueError(f"run columns: {sorted(allowed)}")
        if values.get("status", RUN_STATUSES[0]) not in RUN_STATUSES:
            raise ValueError(f"run status {values['status']!r} is not one of {RUN_STATUSES}")
        cols = ", ".join(f"{k} = ?" for k in values)
        args = tuple(json.dumps(v) if k in ("flower_runs", "errors") else v
                     for k, v in values.items())
        self._run(f"UPDATE runs SET {cols} WHERE id = ?", (*args, run_id))

    def add_error(self, run_id: str, message: str) -> None:
        row = self.run(run_id)
        if row is not None:
            self.update_run(run_id, errors=[*row.errors, message])


def _encode(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return value


def _site(r: sqlite3.Row) -> SiteRow:
    return SiteRow(r["name"], r["fingerprint"], bool(r["revoked"]), bool(r["online"]),
                   r["last_seen"], json.loads(r["data_summary"]) if r["data_summary"] else None,
                   r["registration_problem"])


def _run(r: sqlite3.Row) -> RunRow:
    return RunRow(r["id"], r["template"], r["status"], r["started_at"], r["finished_at"],
                  json.loads(r["flower_runs"]), json.loads(r["errors"]))
