"""The audit log's anchor: the newest record a writer saw committed (sequence number and
hash), HMAC-signed with the audit key, in a small file kept apart from the database.
:class:`~server.serving.audit_log.AuditLog` moves it forward after every committed
append and checks the log against it in ``verify``: a log that ends before its anchor
lost its newest records."""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class AuditAnchor:
    """The newest record a writer saw committed, kept in a file apart from the log."""

    seq: int
    hash: str
    mac: str = ""  # HMAC-SHA-256 of seq and hash with the audit key ("" when unkeyed)

    @staticmethod
    def sign(key: bytes | None, seq: int, digest: str) -> AuditAnchor:
        mac = hmac.new(key, f"audit-anchor:{seq}:{digest}".encode(),
                       hashlib.sha256).hexdigest() if key else ""
        return AuditAnchor(seq, digest, mac)

    def signed_by(self, key: bytes | None) -> bool:
        return hmac.compare_digest(AuditAnchor.sign(key, self.seq, self.hash).mac, self.mac)

    @staticmethod
    def read(path: Path) -> AuditAnchor | None:
        """The anchor in ``path``; ``None`` when there is none; ValueError if unreadable."""
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"audit anchor {path} is unreadable ({exc.__class__.__name__})"
                             ) from None
        try:
            return AuditAnchor(int(raw["seq"]), str(raw["hash"]), str(raw.get("mac", "")))
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"audit anchor {path} is malformed") from None
