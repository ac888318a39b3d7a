"""Backup archives: files with their SHA-256 and a manifest, written atomically.

:mod:`common.backup.archive` writes, verifies and restores an archive whatever it
holds; the coordinator's contents (registry database, audit log, model bundles,
checkpoints) are collected by :mod:`server.backup`, a site's privacy ledger by
:mod:`client.backup`.
"""

from common.backup.archive import (
    ARCHIVE_SUFFIX,
    BackupError,
    FileEntry,
    Manifest,
    Source,
    ensure_empty_directory,
    extract_archive,
    verify_archive,
    write_archive,
)

__all__ = ["ARCHIVE_SUFFIX", "BackupError", "FileEntry", "Manifest", "Source",
           "ensure_empty_directory", "extract_archive", "verify_archive", "write_archive"]
