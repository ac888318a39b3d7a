"""Durable atomic file writes: the one helper every module uses to replace a file.

A reader (or a process restarted after a crash) sees the old file or the new one, never
half of either: the data go to a uniquely named temporary file in the same directory,
are flushed and fsynced, renamed over the target, and the directory entry is fsynced so
the rename itself survives a power loss.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

PRIVATE_FILE_MODE = 0o600
PUBLIC_FILE_MODE = 0o644


def write_bytes_atomic(path: Path, data: bytes, *, private: bool = False,
                       durable: bool = True) -> None:
    """Replace ``path`` with ``data``; private files are 0600 from creation on."""
    write_with_atomic(path, lambda fh: fh.write(data), private=private, durable=durable)


def write_text_atomic(path: Path, text: str, *, private: bool = False,
                      durable: bool = True) -> None:
    """Replace ``path`` with ``text`` (UTF-8)."""
    write_bytes_atomic(path, text.encode("utf-8"), private=private, durable=durable)


def write_torch_atomic(path: Path, obj: Any, *, private: bool = False) -> None:
    """Replace ``path`` with ``obj`` as ``torch.save`` writes it. Serialised in memory
    first: ``torch.save`` into a file turns a failed write (disk full, file too large)
    into a bare ``RuntimeError``; writing the bytes raises the ``OSError`` callers
    recognise."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes_atomic(path, buffer.getvalue(), private=private)


def write_json_atomic(path: Path, payload: Any, *, private: bool = False,
                      default: Callable[[Any], Any] | None = None, indent: int = 2,
                      durable: bool = True) -> None:
    """Replace ``path`` with ``payload`` as JSON. NaN and infinity are refused
    (``allow_nan=False``): they are not JSON and would poison whoever reads the file."""
    text = json.dumps(payload, indent=indent, default=default, allow_nan=False) + "\n"
    write_text_atomic(path, text, private=private, durable=durable)


def write_with_atomic(path: Path, write: Callable[[BinaryIO], Any], *,
                      private: bool = False, durable: bool = True) -> None:
    """Replace ``path`` with whatever ``write`` puts into the binary file it is given
    (for writers that want a file object, e.g. ``np.savez``). ``durable=False`` skips
    the fsyncs: still atomic for readers and after a process crash, but a power loss
    may leave the previous version (for files rewritten very often)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE if private else PUBLIC_FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if durable:
        fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (best effort where the OS refuses)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
