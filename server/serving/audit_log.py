"""Append-only, hash-chained audit log in the serving database.

Each record holds who (subject and role), what (action, model id, a small detail
object: counts and modality names, never a patient's value), when, and the request id.
Its ``hash`` is SHA-256 (HMAC-SHA-256 when an audit key is configured) over its own
fields and the previous record's hash, and sequence numbers run 1, 2, 3, ... without
gaps. :func:`verify` recomputes the chain: a modified record breaks its own hash, a
deleted record leaves a gap in the sequence and breaks the next record's link.

Without a key, someone who can write the database could rewrite the whole chain from
the tampered record on; with a key kept outside the database they cannot. Deleting the
newest records (truncation) is visible against a head noted earlier: ``verify`` reports
the head and accepts ``expect_head`` to compare with one.

On SQLite, triggers refuse UPDATE and DELETE on the table, so the application itself
cannot rewrite history; on other databases grant the service INSERT and SELECT only.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, Integer, String, Text, func, insert, select, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from server.serving.database import Base

logger = logging.getLogger(__name__)

GENESIS = "0" * 64
_APPEND_RETRIES = 20


class AuditRecord(Base):
    __tablename__ = "audit_log"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    ts: Mapped[str] = mapped_column(String(40))  # ISO-8601 UTC, hashed as stored
    actor: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(40))
    action: Mapped[str] = mapped_column(String(80))
    model_id: Mapped[str] = mapped_column(String(200), default="")
    request_id: Mapped[str] = mapped_column(String(100), default="")
    detail: Mapped[str] = mapped_column(Text, default="{}")  # canonical JSON
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq, "ts": self.ts, "actor": self.actor, "role": self.role,
            "action": self.action, "model_id": self.model_id, "request_id": self.request_id,
            "detail": json.loads(self.detail), "prev_hash": self.prev_hash, "hash": self.hash,
        }


def record_hash(
    key: bytes | None,
    *,
    seq: int, ts: str, actor: str, role: str, action: str, model_id: str,
    request_id: str, detail: str, prev_hash: str,
) -> str:
    """Hash of one record's content and its predecessor's hash (HMAC when keyed)."""
    blob = json.dumps(
        [seq, ts, actor, role, action, model_id, request_id, detail, prev_hash],
        separators=(",", ":"), ensure_ascii=True,
    ).encode()
    if key:
        return hmac.new(key, blob, hashlib.sha256).hexdigest()
    return hashlib.sha256(blob).hexdigest()


def install_append_only_guards(engine: Engine) -> None:
    """SQLite: triggers that abort UPDATE and DELETE on the audit table."""
    if engine.dialect.name != "sqlite":
        return
    with engine.begin() as conn:
        for op in ("UPDATE", "DELETE"):
            conn.execute(text(
                f"CREATE TRIGGER IF NOT EXISTS audit_log_no_{op.lower()} BEFORE {op} ON audit_log "
                "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END"
            ))


class AuditLog:
    """Appends records and verifies the chain; share one instance per process."""

    def __init__(self, sessions: sessionmaker, key: str | bytes = b"") -> None:
        self._sessions = sessions
        self._engine: Engine = sessions.kw["bind"]
        self._key = key.encode() if isinstance(key, str) else key

    def append(
        self,
        *,
        actor: str,
        role: str,
        action: str,
        model_id: str = "",
        request_id: str = "",
        detail: dict[str, Any] | None = None,
        session: Session | None = None,
    ) -> AuditRecord:
        """Append one record. With ``session`` it joins the caller's transaction (so an
        audited change and its record commit together); otherwise it commits its own."""
        entry = Entry(actor, role, action, model_id, request_id, _canonical(detail))
        if session is not None:
            return AuditRecord(**self._append_in(session.connection(), [entry])[0])
        return AuditRecord(**self.append_many([entry])[0])

    def append_many(self, entries: list[Entry]) -> list[dict[str, Any]]:
        """Append ``entries`` in order, in one transaction of their own; returns the rows."""
        delay = 0.005
        for attempt in range(_APPEND_RETRIES):
            try:
                # A bare Core connection: the request path needs no ORM session.
                with self._engine.begin() as conn:
                    return self._append_in(conn, entries)
            except (IntegrityError, OperationalError) as exc:
                # Another writer appended after the head we read (non-SQLite databases).
                if attempt == _APPEND_RETRIES - 1:
                    raise
                logger.debug("audit append raced (%s); retrying", exc.__class__.__name__)
                time.sleep(delay)
                delay = min(delay * 2, 0.2)
        raise AssertionError("unreachable")

    def _append_in(self, conn: Connection, entries: list[Entry]) -> list[dict[str, Any]]:
        head = conn.execute(
            select(AuditRecord.seq, AuditRecord.hash).order_by(AuditRecord.seq.desc()).limit(1)
        ).first()
        seq, prev = (head[0], head[1]) if head else (0, GENESIS)
        ts = datetime.now(UTC).isoformat(timespec="microseconds")
        rows = []
        for e in entries:
            seq += 1
            fields_ = dict(seq=seq, ts=ts, actor=e.actor, role=e.role, action=e.action,
                           model_id=e.model_id, request_id=e.request_id, detail=e.detail,
                           prev_hash=prev)
            prev = record_hash(self._key, **fields_)
            rows.append({**fields_, "hash": prev})
        # Core executemany: a fraction of the ORM unit-of-work cost on the request path.
        conn.execute(insert(AuditRecord.__table__), rows)
        return rows

    def records(self, limit: int | None = None) -> list[AuditRecord]:
        with self._sessions() as s:
            q = select(AuditRecord).order_by(AuditRecord.seq.desc())
            if limit:
                q = q.limit(limit)
            return list(reversed(s.scalars(q).all()))

    def count(self) -> int:
        with self._sessions() as s:
            return int(s.scalar(select(func.count()).select_from(AuditRecord)) or 0)

    def verify(self, expect_head: tuple[int, str] | None = None) -> VerifyResult:
        """Recompute the whole chain; see :class:`VerifyResult`."""
        result = VerifyResult()
        prev_seq, prev_hash = 0, GENESIS
        with self._sessions() as s:
            for rec in s.scalars(select(AuditRecord).order_by(AuditRecord.seq)):
                result.checked += 1
                if rec.seq != prev_seq + 1:
                    missing = (f"record {prev_seq + 1}" if rec.seq == prev_seq + 2
                               else f"records {prev_seq + 1}..{rec.seq - 1}")
                    result.problems.append(
                        f"{missing} missing: the chain jumps from record {prev_seq} to "
                        f"record {rec.seq} (deleted)")
                if rec.prev_hash != prev_hash:
                    result.problems.append(
                        f"record {rec.seq}: link to the previous record is broken "
                        f"(prev_hash {rec.prev_hash[:12]}… != {prev_hash[:12]}…)")
                expected = record_hash(
                    self._key, seq=rec.seq, ts=rec.ts, actor=rec.actor, role=rec.role,
                    action=rec.action, model_id=rec.model_id, request_id=rec.request_id,
                    detail=rec.detail, prev_hash=rec.prev_hash,
                )
                if not hmac.compare_digest(expected, rec.hash):
                    result.problems.append(
                        f"record {rec.seq}: content does not match its hash (modified)")
                # Follow the stored hash so one modification is reported once, not at
                # every later record.
                prev_seq, prev_hash = rec.seq, rec.hash
        result.head = (prev_seq, prev_hash)
        if expect_head is not None:
            seq, digest = expect_head
            if prev_seq < seq:
                result.problems.append(
                    f"records {prev_seq + 1}..{seq} missing: the log ends at record "
                    f"{prev_seq} but an earlier head was record {seq} (truncated)")
            else:
                with self._sessions() as s:
                    stored = s.scalar(select(AuditRecord.hash).where(AuditRecord.seq == seq))
                if stored != digest:
                    result.problems.append(
                        f"record {seq}: hash differs from the head noted earlier")
        return result


@dataclass(frozen=True)
class Entry:
    """What a caller records; sequence, time and hashes are added on append."""

    actor: str
    role: str
    action: str
    model_id: str = ""
    request_id: str = ""
    detail: str = "{}"  # canonical JSON


def entry(*, actor: str, role: str, action: str, model_id: str = "", request_id: str = "",
          detail: dict[str, Any] | None = None) -> Entry:
    """An :class:`Entry` with ``detail`` in canonical JSON."""
    return Entry(actor, role, action, model_id, request_id, _canonical(detail))


def _canonical(detail: dict[str, Any] | None) -> str:
    return json.dumps(detail or {}, sort_keys=True, separators=(",", ":"), default=str)


@dataclass
class VerifyResult:
    checked: int = 0
    problems: list[str] = field(default_factory=list)
    head: tuple[int, str] = (0, GENESIS)

    @property
    def ok(self) -> bool:
        return not self.problems
