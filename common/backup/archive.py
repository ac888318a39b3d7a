"""One backup archive: a gzip'd tar of files, then ``MANIFEST.json`` as the last member.

The manifest lists every file with its size and SHA-256, plus what each component
recorded at backup time (e.g. the audit chain's head, the epsilon a ledger had spent).
It is written last, so an archive cut short anywhere (a crash, a full disk, a copy
stopped half way) has no manifest and never verifies. The archive itself is written
through :func:`common.atomic.write_with_atomic`: until it is complete and fsynced,
the destination name does not exist. A ``ARCHIVE.sha256`` file beside it
(``sha256sum -c`` format) covers the manifest too.

Restoring verifies everything first and writes only into an empty directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any, BinaryIO

from common.atomic import write_text_atomic, write_with_atomic

FORMAT = "cancer-alpha-backup"
VERSION = 1
MANIFEST_NAME = "MANIFEST.json"
ARCHIVE_SUFFIX = ".tar.gz"
CHECKSUM_SUFFIX = ".sha256"
_CHUNK = 1 << 20


class BackupError(ValueError):
    """A backup cannot be written, verified or restored; the message says why."""


@dataclass(frozen=True)
class FileEntry:
    """One file in the archive: where it goes, which component it belongs to, its size
    and SHA-256."""

    path: str
    component: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Source:
    """A local file to put into the archive at ``path`` (a relative POSIX path)."""

    path: str
    local: Path
    component: str


@dataclass
class Manifest:
    """What an archive holds: ``kind`` (``coordinator`` or ``site``), its files, and
    each component's facts at backup time."""

    kind: str
    files: list[FileEntry]
    components: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    format: str = FORMAT
    version: int = VERSION

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["files"] = [asdict(f) for f in self.files]
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Manifest:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise BackupError(f"{where}: not a Cancer Alpha backup (no {FORMAT} manifest)")
        if data.get("version") != VERSION:
            raise BackupError(f"{where}: backup format version {data.get('version')!r} is "
                              f"not supported (this release reads version {VERSION})")
        try:
            files = [FileEntry(**f) for f in data["files"]]
            return cls(kind=str(data["kind"]), files=files,
                       components=dict(data.get("components") or {}),
                       created_at=str(data.get("created_at", "")))
        except (KeyError, TypeError) as exc:
            raise BackupError(f"{where}: the manifest is malformed ({exc})") from None

    def files_of(self, component: str) -> list[FileEntry]:
        return [f for f in self.files if f.component == component]


# --------------------------------------------------------------------------- writing
def write_archive(dest: Path, kind: str, sources: list[Source],
                  components: dict[str, Any] | None = None) -> Manifest:
    """Write ``sources`` and their manifest to ``dest`` (refused if it exists), then
    ``dest.sha256``. Either ``dest`` is complete or it does not exist."""
    dest = Path(dest)
    if dest.exists():
        raise BackupError(f"{dest} already exists; a backup never replaces another, "
                          "choose a new name")
    names = [s.path for s in sources]
    for name in names:
        _check_member_name(name, str(dest))
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise BackupError(f"two files would be stored as {duplicates}")
    manifest = Manifest(kind=kind, files=[], components=dict(components or {}),
                        created_at=datetime.now(UTC).isoformat(timespec="seconds"))

    def write(fh: BinaryIO) -> None:
        with tarfile.open(fileobj=fh, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
            for source in sources:
                manifest.files.append(_add_file(tar, source))
            blob = json.dumps(manifest.to_dict(), indent=1, sort_keys=True).encode()
            info = tarfile.TarInfo(MANIFEST_NAME)
            info.size, info.mode, info.mtime = len(blob), 0o600, int(datetime.now().timestamp())
            tar.addfile(info, io.BytesIO(blob))

    write_with_atomic(dest, write, private=True)
    write_text_atomic(checksum_path(dest), f"{file_sha256(dest)}  {dest.name}\n")
    return manifest


def _add_file(tar: tarfile.TarFile, source: Source) -> FileEntry:
    with open(source.local, "rb") as f:
        stat = os.fstat(f.fileno())
        info = tarfile.TarInfo(source.path)
        info.size, info.mode, info.mtime = stat.st_size, 0o600, int(stat.st_mtime)
        reader = _HashingReader(f)
        tar.addfile(info, reader)
    if reader.read_bytes != stat.st_size:
        raise BackupError(f"{source.local} changed while it was being backed up")
    return FileEntry(source.path, source.component, stat.st_size, reader.hexdigest())


class _HashingReader(io.RawIOBase):
    """Reads a file and hashes exactly what was read."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f, self._h, self.read_bytes = f, hashlib.sha256(), 0

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        self._h.update(data)
        self.read_bytes += len(data)
        return data

    def hexdigest(self) -> str:
        return self._h.hexdigest()


# ------------------------------------------------------------------------- verifying
def verify_archive(path: Path) -> Manifest:
    """The archive's manifest, after checking every file against it (size, SHA-256),
    that nothing is missing or extra, and the ``.sha256`` file beside it when there is
    one; :class:`BackupError` names every problem."""
    path = Path(path)
    if not path.is_file():
        raise BackupError(f"{path}: no such backup file")
    problems: list[str] = []
    sidecar = checksum_path(path)
    if sidecar.is_file():
        expected = sidecar.read_text(encoding="utf-8").split()[:1]
        if expected != [file_sha256(path)]:
            problems.append(f"its SHA-256 differs from the one in {sidecar.name} (the file "
                            "was modified or cut short after it was written)")
    try:
        seen, manifest_blob = _read_members(path, problems)
    except BackupError as exc:
        raise BackupError("; ".join([str(exc), *problems])) from None
    if manifest_blob is None:
        raise BackupError("; ".join([
            f"{path}: no manifest: the archive is incomplete (an interrupted backup, or a "
            "truncated copy); it is not a usable backup", *problems]))
    try:
        manifest = Manifest.from_dict(json.loads(manifest_blob), str(path))
    except json.JSONDecodeError as exc:
        raise BackupError(f"{path}: the manifest is not valid JSON ({exc})") from None
    for entry in manifest.files:
        found = seen.pop(entry.path, None)
        if found is None:
            problems.append(f"{entry.path}: listed in the manifest but not in the archive")
        elif found != (entry.size, entry.sha256):
            problems.append(f"{entry.path}: content differs from the manifest (size "
                            f"{found[0]} vs {entry.size}, sha256 {found[1][:12]}… vs "
                            f"{entry.sha256[:12]}…): modified or corrupted")
    problems += [f"{name}: in the archive but not in the manifest" for name in sorted(seen)]
    if problems:
        raise BackupError(f"{path} does not verify: " + "; ".join(problems))
    return manifest


def _read_members(path: Path, problems: list[str]) -> tuple[dict[str, tuple[int, str]],
                                                           bytes | None]:
    """Size and SHA-256 of every file member, and the manifest's bytes (None if absent)."""
    seen: dict[str, tuple[int, str]] = {}
    manifest_blob: bytes | None = None
    with _reading(path), tarfile.open(path, mode="r:gz") as tar:
        for member in tar:
            if manifest_blob is not None:
                problems.append(f"{member.name}: stored after the manifest")
                continue
            if member.name == MANIFEST_NAME and member.isfile():
                fh = tar.extractfile(member)
                assert fh is not None
                manifest_blob = fh.read()
                continue
            try:
                _check_member(member, str(path))
            except BackupError as exc:
                problems.append(str(exc))
                continue
            fh = tar.extractfile(member)
            assert fh is not None
            seen[member.name] = _digest_stream(fh)
    return seen, manifest_blob


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn the ways a damaged gzip'd tar fails into one clear :class:`BackupError`."""
    try:
        yield
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise BackupError(f"{path}: the archive is truncated or corrupt ({exc}); it is not "
                          "a usable backup") from None


def _digest_stream(fh: IO[bytes]) -> tuple[int, str]:
    h, size = hashlib.sha256(), 0
    for chunk in iter(lambda: fh.read(_CHUNK), b""):
        h.update(chunk)
        size += len(chunk)
    return size, h.hexdigest()


# ------------------------------------------------------------------------- restoring
def ensure_empty_directory(directory: Path) -> None:
    """Refuse a directory that exists and is not empty (naming it)."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise BackupError(f"{directory} exists and is not a directory; restore into a new "
                          "or empty directory")
    if directory.is_dir() and any(directory.iterdir()):
        raise BackupError(f"{directory} is not empty; restore only into a new or empty "
                          "directory (nothing was written)")


def extract_archive(path: Path, into: Path) -> Manifest:
    """Verify ``path``, then write its files under ``into`` (new or empty), each 0600
    and checked against the manifest as it is written."""
    into = Path(into)
    ensure_empty_directory(into)
    manifest = verify_archive(path)
    expected = {f.path: f for f in manifest.files}
    into.mkdir(parents=True, exist_ok=True)
    with _reading(path), tarfile.open(path, mode="r:gz") as tar:
        for member in tar:
            entry = expected.get(member.name)
            if entry is None:
                continue  # the manifest itself
            fh = tar.extractfile(member)
            assert fh is not None
            reader = _HashingReader(fh)
            target = into / PurePosixPath(entry.path)
            write_with_atomic(target, lambda out, r=reader: _copy(r, out), private=True)
            if (reader.read_bytes, reader.hexdigest()) != (entry.size, entry.sha256):
                raise BackupError(f"{path}: {entry.path} changed while it was restored")
    return manifest


def _copy(src: _HashingReader, dst: BinaryIO) -> None:
    for chunk in iter(lambda: src.read(_CHUNK), b""):
        dst.write(chunk)


# ----------------------------------------------------------------------------- shared
def checksum_path(archive: Path) -> Path:
    return archive.with_name(archive.name + CHECKSUM_SUFFIX)


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return _digest_stream(f)[1]


def _check_member_name(name: str, where: str) -> None:
    pure = PurePosixPath(name)
    if (not name or pure.is_absolute() or ".." in pure.parts or name == MANIFEST_NAME
            or "\\" in name or str(pure) != name):
        raise BackupError(f"{where}: {name!r} is not a safe relative file name")


def _check_member(member: tarfile.TarInfo, where: str) -> None:
    _check_member_name(member.name, where)
    if not member.isfile():
        raise BackupError(f"{where}: {member.name!r} is not a regular file")
