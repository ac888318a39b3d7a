"""One SQLAlchemy engine for the registry and the audit log (SQLite by default).

SQLite gets WAL journaling (readers do not block the writer), a busy timeout, and
``BEGIN IMMEDIATE`` for every transaction: the audit log reads the chain head and
appends after it, and an immediate transaction takes the write lock before that read,
so two server workers can never both append after the same head. Other databases rely
on the audit log's unique sequence number plus a retry (see ``audit_log.py``).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 15_000


class Base(DeclarativeBase):
    """Declarative base of every serving table."""


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite files get their parent directory created."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        # Registry and audit log are the operator's only: a new directory 0700, the file
        # 0600 from creation on (SQLite gives its -wal and -shm files the same mode).
        path = Path(parsed.database).expanduser()
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.touch(mode=0o600, exist_ok=True)
        with contextlib.suppress(OSError):  # not ours to change: leave it as it is
            path.chmod(0o600)
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        # Let SQLAlchemy's "begin" event emit BEGIN itself (pysqlite would defer it).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA synchronous=NORMAL")  # durable across app crashes in WAL mode
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:  # type: ignore[no-untyped-def]
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def open_database(url: str) -> tuple[Engine, sessionmaker]:
    """Engine plus session factory, with every serving table created if absent."""
    from server.serving import audit_log, registry, revocation  # noqa: F401  (register the tables)

    engine = make_engine(url)
    Base.metadata.create_all(engine)
    audit_log.install_append_only_guards(engine)
    return engine, sessionmaker(engine, expire_on_commit=False)


def ping(engine: Engine) -> None:
    """Raise unless the database answers."""
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
