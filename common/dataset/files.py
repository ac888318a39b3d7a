"""File identity for the per-process caches: stat signatures and cached SHA-256.

A file counts as unchanged while its size, mtime_ns and inode stay the same. A file
modified within ``SETTLE_NS`` of being looked at is never cached: a write in the same
clock tick as an earlier read could leave size and mtime unchanged.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

SETTLE_NS = 2_000_000_000
# Most recent hashes kept; bounds memory, not correctness.
_MAX_HASHES = 256

FileState = tuple[int, int, int] | None  # (size, mtime_ns, inode); None = no such file

_hashes: dict[tuple[str, FileState], str] = {}
_lock = threading.Lock()


def file_state(path: Path) -> FileState:
    """``(size, mtime_ns, inode)`` of a regular file, None when it is not one."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not os.path.isfile(path):
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def settled(state: FileState, now_ns: int | None = None) -> bool:
    """True when ``state`` may be cached: absent, or last modified over SETTLE_NS ago."""
    if state is None:
        return True
    now = time.time_ns() if now_ns is None else now_ns
    return now - state[1] > SETTLE_NS


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's bytes, computed once per process while the file is unchanged."""
    key = (str(Path(path).resolve()), file_state(path))
    with _lock:
        cached = _hashes.get(key)
    if cached is not None:
        return cached
    digest = _hash(Path(path))
    if key[1] is not None and settled(key[1]) and file_state(path) == key[1]:
        with _lock:
            if len(_hashes) >= _MAX_HASHES:
                _hashes.pop(next(iter(_hashes)))
            _hashes[key] = digest
    return digest


def _hash(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def clear_caches() -> None:
    """Forget every cached hash (tests; a long-lived process after bulk edits)."""
    with _lock:
        _hashes.clear()
