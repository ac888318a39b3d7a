"""Loading a dataset directory: inspect it (report everything) or load it (raise).

:func:`load_dataset` keeps its results for the life of the process: every simulated
hospital, the server and each client process ask for the same directory, and a repeated
call with unchanged files returns the kept data without reading, validating or
hashing again. Files count as unchanged while the size, mtime_ns and inode of every
file read (and of the manifest) stay the same; the kept arrays are read-only and every
caller gets its own copy.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from common.dataset import files, lookup
from common.dataset.assembly import assemble, inspect_part
from common.dataset.files import FileState, file_state, settled
from common.dataset.findings import DatasetError, Findings, ValidationReport
from common.dataset.labels import parse_labels
from common.dataset.manifest import Manifest, files_read
from common.dataset.multiomics import DatasetOrigin, MultiOmicsData
from common.paths import BUNDLED
from common.schema import FeatureSchema

logger = logging.getLogger(__name__)

# Distinct (directory, manifest, split, schema) loads kept per process.
CACHE_SIZE = 8

_CacheKey = tuple[str, str | None, str | None, FeatureSchema | None, bool]
_Stamp = tuple[str, tuple[tuple[str, FileState], ...]]


@dataclass(frozen=True)
class _Kept:
    stamp: _Stamp
    data: MultiOmicsData  # arrays read-only; callers get copies


_kept: OrderedDict[_CacheKey, _Kept] = OrderedDict()
_lock = threading.Lock()


def inspect_dataset(
    directory: Path | str,
    *,
    split: str | None = None,
    manifest: Path | None = None,
    schema: FeatureSchema | None = None,
    require_labels: bool = True,
) -> tuple[MultiOmicsData | None, ValidationReport]:
    """Read and validate a dataset directory; never raises for problems in the data.

    Returns ``(data, report)``; ``data`` is None when the report has errors. With
    ``schema``, data is aligned to it (see :meth:`MultiOmicsData.align_to`). With
    ``split=None`` a dataset with splits is loaded whole (splits concatenated).
    """
    directory = Path(directory)
    if not directory.is_dir():
        return None, _not_a_directory(directory, split)
    try:
        man = lookup.read_manifest(directory, manifest)
    except DatasetError as e:
        return None, replace(e.report, directory=directory, split=split)
    return _inspect(directory, man, split, schema, require_labels)


def load_dataset(
    directory: Path | str,
    *,
    split: str | None = None,
    manifest: Path | None = None,
    schema: FeatureSchema | None = None,
    require_labels: bool = True,
) -> MultiOmicsData:
    """Like :func:`inspect_dataset`, but raise :class:`DatasetError` on errors and log
    the warnings; repeated calls on unchanged files return a copy of the kept result."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DatasetError(_not_a_directory(directory, split))
    try:
        man = lookup.read_manifest(directory, manifest)
    except DatasetError as e:
        raise DatasetError(replace(e.report, directory=directory, split=split)) from None
    if split is not None and split not in man.splits:
        _, report = _inspect(directory, man, split, schema, require_labels)
        raise DatasetError(report)
    key: _CacheKey = (
        str(directory.resolve()),
        None if manifest is None else str(Path(manifest).resolve()),
        split,
        schema,
        require_labels,
    )
    stamp = _stamp(directory, man, split)
    with _lock:
        kept = _kept.get(key)
        if kept is not None and kept.stamp == stamp:
            _kept.move_to_end(key)
            logger.debug("%s: unchanged since read, using the loaded data", directory)
            return kept.data.copy()
    data, report = _inspect(directory, man, split, schema, require_labels)
    for f in report.warnings:
        logger.warning("%s: %s", report.directory, f)
    if data is None:
        raise DatasetError(report)
    if all(settled(state) for _, state in stamp[1]) and _stamp(directory, man, split) == stamp:
        _freeze(data)
        with _lock:
            _kept[key] = _Kept(stamp, data)
            _kept.move_to_end(key)
            while len(_kept) > CACHE_SIZE:
                _kept.popitem(last=False)
        return data.copy()
    return data


def clear_caches() -> None:
    """Forget every kept load, manifest and hash (tests; after bulk edits of data)."""
    with _lock:
        _kept.clear()
    files.clear_caches()
    lookup.clear_caches()


def _stamp(directory: Path, man: Manifest, split: str | None) -> _Stamp:
    """How the layout was chosen plus the state of the manifest and every file read."""
    files = [(rel, file_state(directory / rel)) for rel in files_read(directory, man, split)]
    if man.source is not None:
        files.append((f"manifest:{man.source}", file_state(man.source)))
    return man.chosen_by, tuple(files)


def _freeze(data: MultiOmicsData) -> None:
    arrays: list[np.ndarray | None] = [data.patient_ids, data.mask, data.labels]
    for x in [*arrays, *data.features.values()]:
        if x is not None:
            x.flags.writeable = False


def _not_a_directory(directory: Path, split: str | None) -> ValidationReport:
    out = Findings()
    alias = str(directory)
    hint = ""
    if alias.lower() in BUNDLED:
        hint = f"; {alias!r} is a bundled alias: pass common.paths.resolve_data_dir({alias!r})"
    out.error(f"{directory} is not a directory{hint}")
    return ValidationReport(directory, out.finish(), 0, {}, split=split)


def _inspect(
    directory: Path,
    man: Manifest,
    split: str | None,
    schema: FeatureSchema | None,
    require_labels: bool,
) -> tuple[MultiOmicsData | None, ValidationReport]:
    out = Findings()
    report = ValidationReport(
        directory,
        [],
        0,
        {},
        manifest=man.source,
        split=split,
        manifest_source=man.chosen_by,
        manifest_sha256=man.sha256,
    )

    def done(data: MultiOmicsData | None) -> tuple[MultiOmicsData | None, ValidationReport]:
        report.findings = out.finish()
        return (data if report.ok else None), report

    if split is not None and split not in man.splits:
        have = f"its splits are {list(man.splits)}" if man.splits else "it has no splits"
        out.error(f"unknown split {split!r}: {have}")
        return done(None)
    parts = [
        inspect_part(directory, man, lay, out, require_labels) for lay in man.layouts_of(split)
    ]
    label_names = parse_labels(parts, man, schema, out)
    labelled = all(p.label_values is not None for p in parts)
    data = assemble(parts, man, label_names if labelled else None, schema, report, out)
    if data is not None:
        qc = {m: info["preprocessing"] for m, info in report.modalities.items()
              if info.get("preprocessing")}
        data.origin = DatasetOrigin(str(directory), man.chosen_by, man.sha256, qc or None)
        if data.labels is not None:
            counts = data.class_counts()
            report.classes = {
                nm: int(c) for nm, c in zip(data.schema.label_names, counts, strict=True)
            }
    return done(data)
