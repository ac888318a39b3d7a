"""Append-only, hash-chained audit log in the serving database.

Each record holds who (subject and role), what (action, model id, a small detail
object: counts and modality names, never a patient's value), when, and the request id.
Its ``hash`` is SHA-256 (HMAC-SHA-256 when an audit key is configured) over its own
fields and the previous record's hash, and sequence numbers run 1, 2, 3, ... without
gaps. :func:`verify` recomputes the chain: a modified record breaks its own hash, a
deleted record leaves a gap in the sequence and breaks the next record's link.

Without a key, someone who can write the database could rewrite the whole chain from
the tampered record on; with a key kept outside the database they cannot. A writer
whose key does not match the log's newest record (no key for a keyed log, another key,
or a key for an unkeyed log) is refused (:class:`AuditKeyError`) instead of appending
records that ``verify`` would later call modified.

Deleting the newest records (truncation, or emptying the table) leaves a consistent
shorter chain. The anchor (:mod:`~server.serving.audit_anchor`), a small file kept apart
from the database holding the newest sequence number and hash HMAC-signed with the audit
key, is moved forward after every committed append; ``verify`` reports it and names a
log that ends before its anchor or differs from it. ``expect_head`` still compares with
a head noted elsewhere (e.g. on another machine).

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
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Integer,
    String,
    Text,
    event,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from common.atomic import write_json_atomic
from server.serving.audit_anchor import AuditAnchor
from server.serving.database import Base

logger = logging.getLogger(__name__)

GENESIS = "0" * 64
_APPEND_RETRIES = 20


class AuditKeyError(RuntimeError):
    """This writer's audit key does not match the log it would append to."""


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


def _stored_hash_matches(key: bytes | None, row: Any) -> bool:
    expected = record_hash(
        key, seq=row.seq, ts=row.ts, actor=row.actor, role=row.role, action=row.action,
        model_id=row.model_id, request_id=row.request_id, detail=row.detail,
        prev_hash=row.prev_hash)
    return hmac.compare_digest(expected, row.hash)


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

    def __init__(self, sessions: sessionmaker, key: str | bytes = b"",
                 anchor: Path | str | None = None) -> None:
        self._sessions = sessions
        self._engine: Engine = sessions.kw["bind"]
        self._key = key.encode() if isinstance(key, str) else key
        self.anchor_path = Path(anchor) if anchor else None
        self._checked_head: tuple[int, str] | None = None  # newest record known to match
        self._anchored = -1

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
            row = self._append_in(session.connection(), [entry])[0]
            self._anchor_on_commit(session, row["seq"], row["hash"])
            return AuditRecord(**row)
        return AuditRecord(**self.append_many([entry])[0])

    def append_many(self, entries: list[Entry]) -> list[dict[str, Any]]:
        """Append ``entries`` in order, in one transaction of their own; returns the rows."""
        delay = 0.005
        for attempt in range(_APPEND_RETRIES):
            try:
                # A bare Core connection: the request path needs no ORM session.
                with self._engine.begin() as conn:
                    rows = self._append_in(conn, entries)
                if rows:
                    self._move_anchor(rows[-1]["seq"], rows[-1]["hash"])
                return rows
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
            select(AuditRecord.__table__).order_by(AuditRecord.seq.desc()).limit(1)
        ).first()
        seq, prev = (head.seq, head.hash) if head else (0, GENESIS)
        if head is not None and self._checked_head != (seq, prev):
            self._check_key(head)
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
        self._checked_head = (seq, prev)
        return rows

    @property
    def sessions(self) -> sessionmaker:
        """The session factory of the log's database (for tables audited with it)."""
        return self._sessions

    def check_writable(self) -> None:
        """Raise :class:`AuditKeyError` now if appends would be refused (start-up check)."""
        with self._engine.connect() as conn:
            head = conn.execute(select(AuditRecord.__table__)
                                .order_by(AuditRecord.seq.desc()).limit(1)).first()
        if head is not None:
            self._check_key(head)
            self._checked_head = (head.seq, head.hash)

    def _check_key(self, head: Any) -> None:
        """Refuse to extend a chain this writer's key did not make."""
        if _stored_hash_matches(self._key or None, head):
            return
        if not self._key:
            raise AuditKeyError(
                "the audit log is keyed (HMAC) and this process has no audit key: set "
                "CANCER_ALPHA_AUDIT_KEY or audit_key_file to the log's key; nothing was "
                "appended")
        if _stored_hash_matches(None, head):
            raise AuditKeyError(
                "the audit log was started without a key and this process has one: records "
                "signed with it would not chain; nothing was appended")
        raise AuditKeyError(
            f"the newest audit record ({head.seq}) does not verify with this process's audit "
            "key: the key is not the log's, or the record was modified (run `audit "
            "verify`); nothing was appended")

    def _anchor_on_commit(self, session: Session, seq: int, digest: str) -> None:
        """Move the anchor when the caller's transaction commits; never if it rolls back
        (the sequence number may then be another record's)."""
        pending = [True]

        def committed(_session: Session) -> None:
            if pending[0]:
                self._move_anchor(seq, digest)

        def rolled_back(_session: Session) -> None:
            pending[0] = False

        event.listen(session, "after_commit", committed, once=True)
        event.listen(session, "after_rollback", rolled_back, once=True)

    def _move_anchor(self, seq: int, digest: str) -> None:
        """Record a committed head in the anchor file; it only ever moves forward."""
        if self.anchor_path is None or seq <= self._anchored:
            return
        try:
            current = AuditAnchor.read(self.anchor_path)
        except ValueError:
            current = None  # overwritten by a readable one; verify reports what it finds
        if current is not None and current.seq >= seq and current.signed_by(self._key or None):
            self._anchored = current.seq
            return
        anchor = AuditAnchor.sign(self._key or None, seq, digest)
        # Not fsynced: on the request path every append moves it. After a power loss it
        # may be behind the log (weaker, never false), or ahead of commits SQLite lost
        # (verify then names those records as missing).
        write_json_atomic(self.anchor_path, {"seq": anchor.seq, "hash": anchor.hash,
                                             "mac": anchor.mac}, private=True, durable=False)
        self._anchored = seq

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
        if self.anchor_path is not None:
            self._verify_anchor(result)
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

    def _verify_anchor(self, result: VerifyResult) -> None:
        assert self.anchor_path is not None
        head_seq = result.head[0]
        try:
            anchor = AuditAnchor.read(self.anchor_path)
        except ValueError as exc:
            result.problems.append(str(exc))
            return
        if anchor is None:
            result.anchor = "missing"
            if head_seq:
                result.problems.append(
                    f"the audit anchor {self.anchor_path} is missing although the log has "
                    "records: truncation cannot be ruled out (deleted anchor)")
            return
        signed = anchor.signed_by(self._key or None)
        result.anchor = f"record {anchor.seq} ({'signed' if self._key else 'unsigned'})"
        if not signed:
            result.problems.append(
                f"the audit anchor {self.anchor_path} is not signed with this audit key "
                "(forged, or written with another key)")
        elif head_seq < anchor.seq:
            result.problems.append(
                f"records {head_seq + 1}..{anchor.seq} missing: the log ends at record "
                f"{head_seq} but its anchor says record {anchor.seq} was written (truncated)")
        else:
            with self._sessions() as s:
                stored = s.scalar(select(AuditRecord.hash).where(AuditRecord.seq == anchor.seq))
            if stored != anchor.hash:
                result.problems.append(
                    f"record {anchor.seq}: hash differs from the audit anchor (replaced)")


def open_audit_log(sessions: sessionmaker, settings: Any) -> AuditLog:
    """The audit log as ``settings`` (:class:`~server.serving.settings.ServingSettings`)
    configure it: its key and its anchor file; warns about what is missing."""
    if not settings.audit_key:
        logger.warning("no audit key (CANCER_ALPHA_AUDIT_KEY or audit_key_file): anyone who "
                       "can write the database can rewrite the audit chain undetected")
    anchor = settings.audit_anchor_path()
    if anchor is None:
        logger.warning("no audit anchor file (audit_anchor_file): deleting the newest audit "
                       "records will only be detected against a head noted elsewhere")
    return AuditLog(sessions, settings.audit_key, anchor)


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
    anchor: str = "none configured"  # what the anchor file said, for the report

    @property
    def ok(self) -> bool:
        return not self.problems
