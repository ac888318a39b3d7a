"""Content fingerprints: the SHA-256 of every file a dataset reads, for run records."""

from __future__ import annotations

from pathlib import Path

from common.dataset.files import sha256_file
from common.dataset.lookup import read_manifest
from common.dataset.manifest import files_read


def dataset_fingerprint(directory: Path | str, *, manifest: Path | None = None) -> dict[str, str]:
    """SHA-256 of every file the dataset reads (all splits) and of its manifest.

    Keys are file names relative to ``directory``; a manifest outside the directory is
    keyed ``manifest:<file name>``. Hashes are computed once per process per unchanged
    file (see :mod:`common.dataset.files`).
    """
    directory = Path(directory)
    man = read_manifest(directory, manifest)
    out: dict[str, str] = {}
    for rel in files_read(directory, man):
        path = directory / rel
        if path.is_file():
            out[rel] = sha256_file(path)
    if man.source is not None:
        src = man.source.resolve()
        try:
            key = src.relative_to(directory.resolve()).as_posix()
        except ValueError:
            key = f"manifest:{src.name}"
        out[key] = man.sha256 or sha256_file(src)
    return dict(sorted(out.items()))
