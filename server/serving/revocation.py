"""Revoked tokens: a single token withdrawn by its ``jti`` before it expires.

Revocations live in the serving database (``revoked_tokens``), so they survive restarts
and every worker sees them; each is audited in the same transaction. A worker re-reads
the (small) list at most once per ``refresh_seconds``; a revocation therefore takes
effect everywhere within that time. Rows of tokens past their expiry are not needed
any more (an expired token is refused anyway) and are skipped when reading.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

from sqlalchemy import Integer, String, select
from sqlalchemy.orm import Mapped, mapped_column, sessionmaker

from server.serving.audit_log import AuditLog
from server.serving.database import Base

REFRESH_SECONDS = 1.0


class RevokedToken(Base):
    __tablename__ = "revoked_tokens"

    jti: Mapped[str] = mapped_column(String(100), primary_key=True)
    expires_at: Mapped[int] = mapped_column(Integer)  # the token's exp (0: unknown)
    revoked_at: Mapped[str] = mapped_column(String(40))
    actor: Mapped[str] = mapped_column(String(200))


class RevocationList:
    """Which token ids are revoked; one instance per process."""

    def __init__(self, sessions: sessionmaker, refresh_seconds: float = REFRESH_SECONDS) -> None:
        self._sessions = sessions
        self._refresh = refresh_seconds
        self._revoked: frozenset[str] = frozenset()
        self._read_at = float("-inf")
        self._lock = threading.Lock()

    def is_revoked(self, jti: str) -> bool:
        if time.monotonic() - self._read_at >= self._refresh:
            self._reload()
        return jti in self._revoked

    def _reload(self) -> None:
        with self._lock, self._sessions() as s:
            now = int(time.time())
            rows = s.scalars(select(RevokedToken.jti).where(
                (RevokedToken.expires_at == 0) | (RevokedToken.expires_at > now)))
            self._revoked = frozenset(rows)
            self._read_at = time.monotonic()

    def revoke(self, jti: str, *, actor: str, role: str, audit: AuditLog,
               expires_at: int = 0, request_id: str = "") -> bool:
        """Revoke ``jti`` (audited with it); ``False`` when it already was."""
        if not jti or len(jti) > 100:
            raise ValueError("a token id (jti) is 1-100 characters")
        with self._sessions() as s, s.begin():
            if s.get(RevokedToken, jti) is not None:
                return False
            s.add(RevokedToken(jti=jti, expires_at=int(expires_at), actor=actor,
                               revoked_at=datetime.now(UTC).isoformat(timespec="seconds")))
            audit.append(actor=actor, role=role, action="auth.revoke_token",
                         request_id=request_id, detail={"jti": jti}, session=s)
        self._read_at = float("-inf")  # this process sees it at once
        return True
