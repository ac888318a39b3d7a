"""Which manifest describes a directory, read and hashed once per process.

In order: the manifest passed explicitly; the directory's own ``dataset.toml``; a
shipped manifest (``common/manifests``) when the directory is a bundled set, i.e. the
directory an alias names (``common.paths.bundled_alias``) or one whose files are
byte-identical to the bundled set (SHA-256 of every file the shipped manifest names
equals its ``[fingerprint]`` table); else the convention. File names alone never
select a shipped manifest: another dataset in the same layout would silently get the
bundled set's class names. A directory holding a GDC sample sheet
(``gdc_sample_sheet*.tsv``) and no manifest is read through the sheet
(:mod:`common.dataset.formats.gdc_directory`) instead of the convention.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import tomllib
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from common.dataset.files import FileState, file_state, settled, sha256_file
from common.dataset.findings import DatasetError, Finding, ValidationReport
from common.dataset.formats.gdc_directory import gdc_manifest
from common.dataset.manifest import (
    MANIFEST_NAME,
    Manifest,
    ManifestError,
    convention_manifest,
    parse_manifest,
)
from common.paths import bundled_alias

logger = logging.getLogger(__name__)

SHIPPED_MANIFESTS = Path(__file__).resolve().parent.parent / "manifests"
# The table of a shipped manifest holding the SHA-256 of every file it names.
FINGERPRINT_TABLE = "fingerprint"

_documents: dict[tuple[str, FileState], tuple[dict[str, Any], str]] = {}
_lock = threading.Lock()


@dataclass(frozen=True)
class ShippedManifest:
    """A manifest of a bundled set and the SHA-256 of each file it names."""

    manifest: Manifest
    fingerprint: tuple[tuple[str, str], ...]

    def matches(self, directory: Path) -> bool:
        """True when every named file exists in ``directory`` with the recorded hash."""
        sizes: dict[str, int] = {}
        for rel, _ in self.fingerprint:
            state = file_state(directory / rel)
            if state is None:
                return False
            sizes[rel] = state[0]
        # Smallest first: a foreign dataset usually differs already in its labels file.
        for rel, digest in sorted(self.fingerprint, key=lambda kv: sizes[kv[0]]):
            if sha256_file(directory / rel) != digest:
                return False
        return True


@lru_cache(maxsize=1)
def shipped_manifests() -> dict[str, ShippedManifest]:
    """Shipped manifests by dataset name (= the alias in ``common.paths.BUNDLED``)."""
    out: dict[str, ShippedManifest] = {}
    for path in sorted(SHIPPED_MANIFESTS.glob("*.toml")):
        # A broken shipped manifest is a bug in the project, so let it raise.
        raw = path.read_bytes()
        doc = tomllib.loads(raw.decode("utf-8"))
        fingerprint = doc.pop(FINGERPRINT_TABLE, None)
        man = replace(parse_manifest(doc, path), sha256=hashlib.sha256(raw).hexdigest())
        if not isinstance(fingerprint, dict) or set(fingerprint) != set(man.files()):
            raise RuntimeError(
                f"{path}: [{FINGERPRINT_TABLE}] must give the SHA-256 of exactly {man.files()}"
            )
        out[man.name] = ShippedManifest(man, tuple(sorted(fingerprint.items())))
    return out


def manifest_error(directory: Path, path: Path, message: str, chosen_by: str) -> DatasetError:
    finding = Finding("error", f"manifest: {message}", file=str(path))
    report = ValidationReport(
        directory, [finding], 0, {}, manifest=path, manifest_source=chosen_by
    )
    return DatasetError(report)


def _document(path: Path, directory: Path, chosen_by: str) -> tuple[dict[str, Any], str]:
    """The TOML document of ``path`` and its SHA-256, read once while unchanged."""
    state = file_state(path)
    if state is None:
        raise manifest_error(directory, path, "file not found", chosen_by)
    key = (str(path.resolve()), state)
    with _lock:
        hit = _documents.get(key)
    if hit is not None:
        return hit
    try:
        raw = path.read_bytes()
        doc = tomllib.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise manifest_error(directory, path, f"cannot read it: {e}", chosen_by) from None
    hit = (doc, hashlib.sha256(raw).hexdigest())
    if settled(state) and file_state(path) == state:
        with _lock:
            _documents[key] = hit
    return hit


def load_manifest_file(path: Path, directory: Path, chosen_by: str) -> Manifest:
    """Read and validate one manifest file; :class:`DatasetError` when it is invalid."""
    doc, digest = _document(path, directory, chosen_by)
    try:
        # Validation is cheap and is redone: a manifest without [modalities] takes the
        # modalities from the directory listing, which may have changed.
        man = parse_manifest(doc, path, directory)
    except ManifestError as e:
        raise manifest_error(directory, path, str(e), chosen_by) from None
    return replace(man, chosen_by=chosen_by, sha256=digest)


def read_manifest(directory: Path | str, manifest: Path | str | None = None) -> Manifest:
    """The manifest for ``directory``: explicit, ``dataset.toml``, bundled, or convention.

    ``Manifest.chosen_by`` records which. Raises :class:`DatasetError` when the
    manifest cannot be read or is invalid.
    """
    directory = Path(directory)
    if manifest is not None:
        path = Path(manifest)
        return load_manifest_file(path, directory, f"--manifest {path}")
    own = directory / MANIFEST_NAME
    if own.is_file():
        return load_manifest_file(own, directory, MANIFEST_NAME)
    shipped = shipped_manifests()
    alias = bundled_alias(directory)
    if alias is not None and alias in shipped:
        return replace(shipped[alias].manifest, chosen_by=f"alias:{alias}")
    for name, entry in shipped.items():
        if entry.matches(directory):
            logger.info(
                "%s: its files are byte-identical to the bundled %r set; using %s",
                directory,
                name,
                entry.manifest.source,
            )
            return replace(entry.manifest, chosen_by=f"fingerprint:{name}")
    gdc = gdc_manifest(directory)
    if gdc is not None:
        return gdc
    return convention_manifest(directory)


def clear_caches() -> None:
    """Forget the manifest documents read so far (tests)."""
    with _lock:
        _documents.clear()
    shipped_manifests.cache_clear()
