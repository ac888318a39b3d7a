"""Dataset directories: layout, manifests, loading and validation.

Dataset format
==============

A dataset directory holds one CSV file per modality and a labels file:

* ``<modality>.csv``: a header row, then one row per patient. The first column is the
  patient id, every other column is one feature (numeric). A row whose feature cells
  are all empty means the patient lacks that modality at this site.
* ``labels.csv``: ``patient_id,label``; a label is a class name (``Luminal A``) or an
  integer class index (``0``; ``0.0`` is accepted).

Without a manifest, every ``*.csv`` except ``labels.csv`` is a modality named by its file
stem, in alphabetical order. Other layouts are described by a manifest, looked up in
this order:

1. the path passed explicitly (``manifest=...``, ``--manifest FILE``);
2. ``dataset.toml`` in the directory;
3. a manifest shipped in ``common/manifests/`` whose files all exist in the directory
   (e.g. the bundled BRCA and ROSMAP sets, which are read in place, or a site's extract
   in the same layout); logged at INFO. Its labels files need not exist, so unlabelled
   data in that layout is still read with the manifest's modality names;
4. the convention above.

File names in a manifest are relative to the dataset directory, wherever the manifest
itself lives.

Manifest keys (TOML)
--------------------
::

    [dataset]
    name = "brca"                      # required
    label_names = ["Luminal A", ...]   # optional: class order; integer label k means
                                       # label_names[k]; string labels must be among them
    site_pattern = "^TCGA-([A-Z0-9]{2})-"  # optional regex, one group = site code taken
                                       # from the patient id; "" = ids carry no site.
                                       # Default: TCGA_SITE_PATTERN (tissue source site)

    [defaults]                         # optional reading options for every file
    header = true                      # first line holds column names
    index_column = 0                   # patient id column: name, 0-based position, or
                                       # false = no id column (ids are generated from the
                                       # split name and 1-based row: "train-0001",
                                       # "row-0001" without splits; rows are then matched
                                       # by position across the files of a split)
    delimiter = ","

    [labels]                           # reading options above, plus:
    file = "labels.csv"                # default "labels.csv" (with splits: per split)
    column = "label"                   # name or 0-based position; default: "label", or
                                       # the only column besides the id column

    [modalities]                       # declared order = modality order of the schema;
                                       # without [modalities] and [splits], the modalities
                                       # follow the convention (all other *.csv files)
    mrna = "rna.csv"                   # short form: just the file
    [modalities.methylation]           # long form: reading options, plus
    file = "methylation.csv"
    feature_names_file = "2_featname.csv"  # one feature name per line, no header; required
                                       # for (and only allowed with) header = false

    [splits.train]                     # optional; each split names its own files, and
    labels = "labels_tr.csv"           # inherits the options of [labels]/[modalities.*]
    modalities = { mrna = "1_tr.csv", methylation = { file = "2_tr.csv" } }

With ``[splits]``, ``[labels]`` and ``[modalities.<name>]`` carry only shared options (e.g.
the feature-name files) and every split must name a file for every modality. Loading
with ``split=None`` concatenates all splits. Unknown keys are errors, so typos do not
pass silently. The shipped ``common/manifests/rosmap.toml`` is a complete example of a
headerless layout with splits.

Class names: ``label_names`` from the manifest if given (classes absent from a small
site still count); otherwise the sorted distinct string labels, or ``"0".."k"`` for
integer labels. Integer labels are never mapped onto a model's class names by guessing:
checking them against a model schema needs ``label_names`` (a ``dataset.toml`` holding
only ``[dataset] name`` and ``label_names`` is enough).

Validation
==========

:func:`inspect_dataset` never raises for problems in the data; it returns a
:class:`ValidationReport` whose findings name the file, column and row (1-based line
number in the file, the header being line 1). Errors: missing labels file, unreadable or
empty CSV, duplicate patient ids, duplicate or empty column names, patients in a modality
file but not in the labels, non-numeric / missing (NaN, empty) / infinite values inside a
row, a feature column with no value at all, a file with no patients, labels that cannot
be parsed or are unknown, a patient without any modality, and (with a model schema)
feature or label names that differ from the schema. Warnings: labelled patients missing
from a modality file or whose row is entirely empty (they lack that modality; masked),
a modality file that is absent, a modality the model knows but the directory lacks, and
constant feature columns. A constant column is only a warning because a small hospital
can legitimately have one (e.g. a one-hot clinical column where every local patient has
the same histology). Repeated findings of one kind in one file are capped at
``MAX_REPEATS``, followed by a "... and N more" finding.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import re
import tomllib
import warnings
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.data import MultiOmicsData
from common.paths import BUNDLED
from common.schema import FeatureSchema, SchemaMismatchError

logger = logging.getLogger(__name__)

TCGA_SITE_PATTERN = r"^TCGA-([A-Z0-9]{2})-"
MANIFEST_NAME = "dataset.toml"
LABELS_FILE = "labels.csv"
SHIPPED_MANIFESTS = Path(__file__).resolve().parent / "manifests"
# Findings of one kind per file before they are summarised as "... and N more".
MAX_REPEATS = 5
# Example ids quoted in one finding.
_EXAMPLES = 5


# --------------------------------------------------------------------------- reports


@dataclass(frozen=True)
class Finding:
    """One validation problem; ``row`` is the 1-based line number (header = line 1)."""

    level: str  # "error" | "warning"
    message: str
    file: str | None = None
    column: str | None = None
    row: int | None = None

    def location(self) -> str:
        parts = []
        if self.file:
            parts.append(self.file)
        if self.column is not None:
            parts.append(f"column {self.column!r}")
        if self.row is not None:
            parts.append(f"row {self.row}")
        return ", ".join(parts)

    def __str__(self) -> str:
        where = self.location()
        return f"{where}: {self.message}" if where else self.message


@dataclass
class ValidationReport:
    """Everything :func:`inspect_dataset` found, plus a per-modality summary."""

    directory: Path
    findings: list[Finding]
    n_patients: int
    # modality -> {"file": str | None, "n_features": int, "n_patients_present": int}
    modalities: dict[str, dict]
    manifest: Path | None = None
    split: str | None = None
    # class name -> patient count (empty for unlabelled data)
    classes: dict[str, int] = field(default_factory=dict)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors


class DatasetError(ValueError):
    """A dataset (or its manifest) has errors; ``report`` holds all findings."""

    def __init__(self, report: ValidationReport) -> None:
        super().__init__(report)
        self.report = report

    def __str__(self) -> str:
        errors = self.report.errors
        lines = [f"{self.report.directory}: {len(errors)} error(s) in the dataset:"]
        lines += [f"  - {f}" for f in errors]
        return "\n".join(lines)


class _Findings:
    """Collects findings, capping repeats of one kind per file."""

    def __init__(self) -> None:
        self.items: list[Finding] = []
        self._count: Counter[tuple[str, str | None, str]] = Counter()
        self._last: dict[tuple[str, str | None, str], int] = {}

    def add(
        self,
        level: str,
        message: str,
        *,
        file: str | None = None,
        column: str | None = None,
        row: int | None = None,
        kind: str | None = None,
    ) -> None:
        if kind is not None:
            key = (level, file, kind)
            self._count[key] += 1
            if self._count[key] > MAX_REPEATS:
                return
            self._last[key] = len(self.items)
        self.items.append(Finding(level, message, file, column, None if row is None else int(row)))

    def error(self, message: str, **kw: Any) -> None:
        self.add("error", message, **kw)

    def warning(self, message: str, **kw: Any) -> None:
        self.add("warning", message, **kw)

    @property
    def has_errors(self) -> bool:
        return any(f.level == "error" for f in self.items)

    def finish(self) -> list[Finding]:
        out = list(self.items)
        # Insert from the back so earlier insertion points stay valid.
        for key, idx in sorted(self._last.items(), key=lambda kv: -kv[1]):
            extra = self._count[key] - MAX_REPEATS
            if extra > 0:
                level, file, kind = key
                out.insert(idx + 1, Finding(level, f"... and {extra} more {kind}", file))
        return out


# ------------------------------------------------------------------------- manifests


@dataclass(frozen=True)
class TableSpec:
    """How to read one CSV file."""

    file: str
    header: bool = True
    index_column: str | int | None = 0  # None: no id column
    delimiter: str = ","
    column: str | int | None = None  # labels only: the label column
    feature_names_file: str | None = None  # modalities only


@dataclass(frozen=True)
class SplitLayout:
    """The files of one split (``name`` is None for a dataset without splits)."""

    name: str | None
    labels: TableSpec
    modalities: tuple[tuple[str, TableSpec], ...]


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest (or the convention layout when ``source`` is None)."""

    name: str
    label_names: tuple[str, ...] | None
    site_pattern: str
    splits: tuple[str, ...]
    source: Path | None
    modality_names: tuple[str, ...]
    layouts: tuple[SplitLayout, ...]

    def layout(self, split: str | None) -> SplitLayout:
        for lay in self.layouts:
            if lay.name == split:
                return lay
        raise KeyError(split)

    def files(self, *, labels: bool = True) -> list[str]:
        """Every file this manifest names (all splits), in a stable order."""
        seen: dict[str, None] = {}
        for lay in self.layouts:
            if labels:
                seen[lay.labels.file] = None
            for _, spec in lay.modalities:
                seen[spec.file] = None
                if spec.feature_names_file:
                    seen[spec.feature_names_file] = None
        return list(seen)


class _ManifestError(Exception):
    pass


_READ_KEYS = ("header", "index_column", "delimiter")
_LABEL_KEYS = (*_READ_KEYS, "file", "column")
_MODALITY_KEYS = (*_READ_KEYS, "file", "feature_names_file")


def _check_keys(table: Any, allowed: tuple[str, ...], where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise _ManifestError(f"{where} must be a table")
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise _ManifestError(f"{where}: unknown key(s) {unknown}; allowed: {list(allowed)}")
    return table


def _check_options(opts: dict[str, Any], where: str) -> dict[str, Any]:
    for key, value in opts.items():
        if key == "header" and not isinstance(value, bool):
            raise _ManifestError(f"{where}: header must be true or false")
        if key == "index_column" and not (
            value is False or isinstance(value, str) or _is_position(value)
        ):
            raise _ManifestError(
                f"{where}: index_column must be a column name, a 0-based position or false"
            )
        if key == "column" and not (isinstance(value, str) or _is_position(value)):
            raise _ManifestError(f"{where}: column must be a column name or a 0-based position")
        if key == "delimiter" and not (isinstance(value, str) and len(value) == 1):
            raise _ManifestError(f"{where}: delimiter must be one character")
        if key in ("file", "feature_names_file") and not (isinstance(value, str) and value):
            raise _ManifestError(f"{where}: {key} must be a non-empty string")
    return opts


def _is_position(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _entry(value: Any, allowed: tuple[str, ...], where: str) -> dict[str, Any]:
    """A file entry: either ``"file.csv"`` or a table of options."""
    if isinstance(value, str):
        return {"file": value}
    return _check_options(dict(_check_keys(value, allowed, where)), where)


def _spec(opts: dict[str, Any], where: str) -> TableSpec:
    index = opts.get("index_column", 0)
    spec = TableSpec(
        file=opts["file"],
        header=opts.get("header", True),
        index_column=None if index is False else index,
        delimiter=opts.get("delimiter", ","),
        column=opts.get("column"),
        feature_names_file=opts.get("feature_names_file"),
    )
    if not spec.header:
        for key in ("index_column", "column"):
            if isinstance(getattr(spec, key), str):
                raise _ManifestError(
                    f"{where}: {key} {getattr(spec, key)!r} is a name but the file has no "
                    "header; use a 0-based position"
                )
    return spec


def _parse_manifest(
    doc: dict[str, Any], source: Path | None, directory: Path | None = None
) -> Manifest:
    _check_keys(doc, ("dataset", "defaults", "labels", "modalities", "splits"), "manifest")
    ds = _check_keys(doc.get("dataset"), ("name", "label_names", "site_pattern"), "[dataset]")
    name = ds.get("name")
    if not isinstance(name, str) or not name:
        raise _ManifestError("[dataset] name is required (a non-empty string)")
    label_names = ds.get("label_names")
    if label_names is not None:
        if (
            not isinstance(label_names, list)
            or not label_names
            or not all(isinstance(x, str) and x for x in label_names)
        ):
            raise _ManifestError("[dataset] label_names must be a non-empty list of strings")
        if len(set(label_names)) != len(label_names):
            raise _ManifestError("[dataset] label_names has duplicates")
    site_pattern = ds.get("site_pattern", TCGA_SITE_PATTERN)
    if not isinstance(site_pattern, str):
        raise _ManifestError("[dataset] site_pattern must be a string")
    if site_pattern:
        try:
            groups = re.compile(site_pattern).groups
        except re.error as e:
            raise _ManifestError(f"[dataset] site_pattern is not a valid regex: {e}") from e
        if groups != 1:
            raise _ManifestError(f"[dataset] site_pattern must have one group, it has {groups}")

    defaults = _check_options(
        dict(_check_keys(doc.get("defaults", {}), _READ_KEYS, "[defaults]")), "[defaults]"
    )
    labels_top = _check_options(
        dict(_check_keys(doc.get("labels", {}), _LABEL_KEYS, "[labels]")), "[labels]"
    )
    mods_raw = doc.get("modalities", {})
    if not isinstance(mods_raw, dict):
        raise _ManifestError("[modalities] must be a table")
    mods_top = {m: _entry(v, _MODALITY_KEYS, f"[modalities.{m}]") for m, v in mods_raw.items()}
    order = list(mods_top)

    splits_raw = doc.get("splits")
    layouts: list[SplitLayout] = []
    if splits_raw is None:
        missing = [m for m, o in mods_top.items() if "file" not in o]
        if missing:
            raise _ManifestError(f"[modalities]: no file given for {missing}")
        labels = {**defaults, "file": LABELS_FILE, **labels_top}
        if not mods_top and directory is not None:
            # A manifest may only name the dataset or its classes; the modalities then
            # follow the convention.
            mods_top = {
                Path(f).stem: {"file": f}
                for f in _convention_files(directory)
                if f != labels["file"]
            }
            order = list(mods_top)
        mods = tuple(
            (m, _spec({**defaults, **o}, f"[modalities.{m}]")) for m, o in mods_top.items()
        )
        layouts.append(SplitLayout(None, _spec(labels, "[labels]"), mods))
    else:
        if not isinstance(splits_raw, dict) or not splits_raw:
            raise _ManifestError("[splits] must hold at least one [splits.<name>] table")
        shared = [f"[modalities.{m}]" for m, o in mods_top.items() if "file" in o]
        if "file" in labels_top:
            shared.insert(0, "[labels]")
        if shared:
            raise _ManifestError(
                f"{', '.join(shared)}: with [splits], name the files in each split"
            )
        for split, sv in splits_raw.items():
            where = f"[splits.{split}]"
            sv = _check_keys(sv, ("labels", "modalities"), where)
            if "labels" not in sv:
                raise _ManifestError(f"{where}: labels (the labels file) is required")
            lab = _entry(sv["labels"], _LABEL_KEYS, f"{where} labels")
            smods_raw = sv.get("modalities", {})
            if not isinstance(smods_raw, dict):
                raise _ManifestError(f"{where}: modalities must be a table")
            smods = {
                m: _entry(v, _MODALITY_KEYS, f"{where} modalities.{m}")
                for m, v in smods_raw.items()
            }
            order += [m for m in smods if m not in order]
            lacking = [m for m in order if m not in smods]
            if lacking:
                raise _ManifestError(f"{where}: no file named for modality {lacking}")
            mods = tuple(
                (m, _spec({**defaults, **mods_top.get(m, {}), **smods[m]}, f"{where} {m}"))
                for m in order
            )
            labels_spec = _spec({**defaults, **labels_top, **lab}, f"{where} labels")
            layouts.append(SplitLayout(split, labels_spec, mods))
        for lay in layouts:
            if [m for m, _ in lay.modalities] != order:
                raise _ManifestError(
                    f"[splits.{lay.name}]: no file named for modality "
                    f"{[m for m in order if m not in dict(lay.modalities)]}"
                )
    if not order:
        raise _ManifestError("[modalities]: the manifest declares no modality")
    for lay in layouts:
        where = f"[splits.{lay.name}]" if lay.name else "manifest"
        for m, spec in lay.modalities:
            if not spec.header and not spec.feature_names_file:
                raise _ManifestError(
                    f"{where} modality {m!r}: a file without header needs feature_names_file"
                )
            if spec.header and spec.feature_names_file:
                raise _ManifestError(
                    f"{where} modality {m!r}: feature_names_file is only for header = false"
                )
        has_ids = {spec.index_column is not None for _, spec in lay.modalities}
        has_ids.add(lay.labels.index_column is not None)
        if len(has_ids) > 1:
            raise _ManifestError(
                f"{where}: either every file has a patient id column or none has "
                "(rows are matched by position only when none has)"
            )
    return Manifest(
        name=name,
        label_names=tuple(label_names) if label_names else None,
        site_pattern=site_pattern,
        splits=tuple(lay.name for lay in layouts if lay.name is not None),
        source=source,
        modality_names=tuple(order),
        layouts=tuple(layouts),
    )


def _manifest_error(directory: Path, path: Path, message: str) -> DatasetError:
    finding = Finding("error", f"manifest: {message}", file=str(path))
    return DatasetError(ValidationReport(directory, [finding], 0, {}, manifest=path))


def _load_manifest_file(path: Path, directory: Path) -> Manifest:
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _manifest_error(directory, path, "file not found") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise _manifest_error(directory, path, f"cannot read it: {e}") from None
    try:
        return _parse_manifest(doc, path, directory)
    except _ManifestError as e:
        raise _manifest_error(directory, path, str(e)) from None


@lru_cache(maxsize=1)
def _shipped() -> tuple[Manifest, ...]:
    out = []
    for path in sorted(SHIPPED_MANIFESTS.glob("*.toml")):
        # A broken shipped manifest is a bug in the project, so let it raise.
        out.append(_parse_manifest(tomllib.loads(path.read_text(encoding="utf-8")), path))
    return tuple(out)


def _convention_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.csv") if p.is_file())


def _convention(directory: Path) -> Manifest:
    files = [f for f in _convention_files(directory) if f != LABELS_FILE]
    mods = tuple((Path(f).stem, TableSpec(f)) for f in files)
    return Manifest(
        name=directory.name,
        label_names=None,
        site_pattern=TCGA_SITE_PATTERN,
        splits=(),
        source=None,
        modality_names=tuple(m for m, _ in mods),
        layouts=(SplitLayout(None, TableSpec(LABELS_FILE), mods),),
    )


def read_manifest(directory: Path, manifest: Path | None = None) -> Manifest:
    """The manifest for ``directory``: explicit, ``dataset.toml``, shipped, or convention.

    Raises :class:`DatasetError` when the manifest cannot be read or is invalid.
    """
    directory = Path(directory)
    if manifest is not None:
        return _load_manifest_file(Path(manifest), directory)
    own = directory / MANIFEST_NAME
    if own.is_file():
        return _load_manifest_file(own, directory)
    matches = [
        m for m in _shipped() if all((directory / f).is_file() for f in m.files(labels=False))
    ]
    if matches:
        best = max(matches, key=lambda m: len(m.files()))
        logger.info(
            "%s has no %s; its files match the shipped manifest %r (%s)",
            directory,
            MANIFEST_NAME,
            best.name,
            best.source,
        )
        return best
    return _convention(directory)


# --------------------------------------------------------------------------- reading


@dataclass
class _Raw:
    header: list[str] | None
    frame: pd.DataFrame  # columns are positions 0..k-1
    lines: np.ndarray  # 1-based line number of each row
    id_pos: int | None


@dataclass
class _Table:
    """One modality file, parsed and checked."""

    file: str
    ids: list[str]
    lines: np.ndarray
    features: list[str]
    values: np.ndarray  # float32 [n, F]; rows of absent patients are zeros
    present: np.ndarray  # bool [n]: the row has values


def _read_csv(directory: Path, spec: TableSpec, out: _Findings, *, text: bool) -> _Raw | None:
    """Read one CSV with positional columns; report problems and return None on failure."""
    rel = spec.file
    path = directory / rel
    try:
        if path.stat().st_size == 0:
            out.error("file is empty", file=rel)
            return None
        header = None
        if spec.header:
            with path.open(newline="", encoding="utf-8-sig") as fh:
                header = next(csv.reader(fh, delimiter=spec.delimiter), None)
            if not header:
                out.error("the first line (header) is empty", file=rel, row=1)
                return None
            header = [h.strip() for h in header]
        id_pos = spec.index_column
        if isinstance(id_pos, str):
            assert header is not None  # manifest parsing guarantees a header for names
            if id_pos not in header:
                out.error(
                    f"no patient id column named {id_pos!r}; columns: {_preview(header)}",
                    file=rel,
                    row=1,
                )
                return None
            id_pos = header.index(id_pos)
        kwargs: dict[str, Any] = {
            "sep": spec.delimiter,
            "header": None,
            "skiprows": 1 if header else 0,
            "skip_blank_lines": False,
            "encoding": "utf-8-sig",
        }
        if header:
            # Fixed width from the header: longer rows raise, shorter ones are NaN-padded.
            kwargs.update(names=list(range(len(header))), index_col=False)
        if text:
            kwargs.update(dtype=str, keep_default_na=False, na_filter=False)
        elif id_pos is not None:
            kwargs.update(dtype={id_pos: str})
        frame = pd.read_csv(path, **kwargs)
        if text:
            # Short rows are padded with NaN even without NA parsing.
            frame = frame.fillna("")
    except pd.errors.EmptyDataError:
        out.error("no data rows (zero patients)", file=rel)
        return None
    except pd.errors.ParserError as e:
        m = re.search(r"line (\d+)", str(e))
        msg = str(e).split("C error: ")[-1].strip()
        out.error(f"cannot parse the file: {msg}", file=rel, row=int(m.group(1)) if m else None)
        return None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        out.error(f"cannot read the file: {e}", file=rel)
        return None
    if id_pos is not None and id_pos >= frame.shape[1]:
        out.error(
            f"index_column {id_pos} is beyond the file's {frame.shape[1]} column(s)", file=rel
        )
        return None
    lines = np.arange(len(frame)) + (2 if header else 1)
    blank = (frame == "").all(axis=1) if text else frame.isna().all(axis=1)
    blank = blank.to_numpy()
    if id_pos is not None:
        keep = ~blank  # a blank line cannot be anybody's row
    else:
        # Rows are matched by position: only trailing blank lines are not patients.
        keep = np.ones(len(frame), dtype=bool)
        nonblank = np.flatnonzero(~blank)
        keep[(nonblank[-1] + 1 if len(nonblank) else 0) :] = False
    if not keep.all():
        frame = frame.loc[keep].reset_index(drop=True)
        lines = lines[keep]
    return _Raw(header, frame, lines, id_pos)


def _ids(raw: _Raw, prefix: str, rel: str, out: _Findings) -> list[str]:
    """Patient ids per row ("" where empty); empty and duplicate ids are reported."""
    n = len(raw.frame)
    if raw.id_pos is None:
        width = max(4, len(str(n)))
        return [f"{prefix}-{i + 1:0{width}d}" for i in range(n)]
    col = raw.frame[raw.id_pos]
    name = raw.header[raw.id_pos] if raw.header else None
    empty = (col.isna() | (col.astype(str).str.strip() == "")).to_numpy()
    for i in np.flatnonzero(empty):
        out.error(
            "empty patient id", file=rel, column=name, row=raw.lines[i], kind="empty patient ids"
        )
    ids = ["" if e else str(v).strip() for v, e in zip(col.tolist(), empty, strict=True)]
    dup = pd.Series(ids).duplicated(keep=False).to_numpy() & ~empty
    if dup.any():
        rows: dict[str, list[int]] = {}
        for i in np.flatnonzero(dup):
            rows.setdefault(ids[i], []).append(int(raw.lines[i]))
        for pid, where in rows.items():
            out.error(
                f"duplicate patient id {pid!r} (rows {', '.join(map(str, where))})",
                file=rel,
                column=name,
                row=where[1],
                kind="duplicate patient ids",
            )
    return ids


def _feature_names(
    directory: Path, spec: TableSpec, raw: _Raw, positions: list[int], out: _Findings
) -> list[str] | None:
    rel = spec.file
    if spec.feature_names_file:
        names_rel = spec.feature_names_file
        try:
            text = (directory / names_rel).read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            out.error(f"feature names file {names_rel!r} (for {rel}) not found", file=names_rel)
            return None
        except (OSError, UnicodeDecodeError) as e:
            out.error(f"cannot read the feature names file: {e}", file=names_rel)
            return None
        names = [line.strip() for line in text.splitlines()]
        while names and not names[-1]:
            names.pop()
        if len(names) != len(positions):
            out.error(
                f"{names_rel} names {len(names)} features but {rel} has {len(positions)} "
                "feature columns",
                file=rel,
            )
            return None
        where, from_file = names_rel, True
    else:
        assert raw.header is not None
        names = [raw.header[p].strip() for p in positions]
        where, from_file = rel, False
    ok = True
    for j, nm in enumerate(names):
        if not nm:
            out.error(
                f"feature column {positions[j] + 1} has no name",
                file=where,
                row=j + 1 if from_file else 1,
                kind="unnamed columns",
            )
            ok = False
    counts = Counter(names)
    for nm, c in counts.items():
        if nm and c > 1:
            cols = [str(positions[j] + 1) for j, x in enumerate(names) if x == nm]
            out.error(
                f"duplicate column name (columns {', '.join(cols)}, 1-based)",
                file=where,
                column=nm,
                kind="duplicate column names",
            )
            ok = False
    return names if ok else None


def _read_modality(directory: Path, spec: TableSpec, prefix: str, out: _Findings) -> _Table | None:
    rel = spec.file
    raw = _read_csv(directory, spec, out, text=False)
    if raw is None:
        return None
    if len(raw.frame) == 0:
        out.error("no data rows (zero patients)", file=rel)
        return None
    positions = [c for c in range(raw.frame.shape[1]) if c != raw.id_pos]
    if not positions:
        out.error("no feature columns", file=rel)
        return None
    ids = _ids(raw, prefix, rel, out)
    names = _feature_names(directory, spec, raw, positions, out)
    block = raw.frame[positions]
    # Numeric columns parse fast; only columns pandas could not parse are examined cell
    # by cell, to name the offending values.
    bad = np.zeros(block.shape, dtype=bool)
    text_cols = [k for k, c in enumerate(positions) if not _is_numeric(block[c])]
    if text_cols:
        block = block.copy()
        for k in text_cols:
            c = positions[k]
            conv = pd.to_numeric(block[c], errors="coerce")
            offending = (conv.isna() & block[c].notna()).to_numpy()
            bad[:, k] = offending
            for i in np.flatnonzero(offending):
                out.error(
                    f"non-numeric value {block[c].iloc[i]!r}",
                    file=rel,
                    column=_col_name(names, k, c),
                    row=raw.lines[i],
                    kind="non-numeric values",
                )
            block[c] = conv
    values = block.to_numpy(dtype=np.float64)
    missing = np.isnan(values) & ~bad
    # Offending cells are not "missing", so a row with one is not taken for empty.
    present = ~missing.all(axis=1)
    empty_rows = ~present
    if not present.any():
        out.error("no patient has a value in this file (every row is empty)", file=rel)
        return None
    dead = missing[present].all(axis=0)
    for k in np.flatnonzero(dead):
        out.error(
            "feature column has no value at all",
            file=rel,
            column=_col_name(names, k, positions[k]),
            kind="all-missing columns",
        )
    partial = missing & present[:, None] & ~dead[None, :]
    for i, k in np.argwhere(partial):
        out.error(
            "missing value (empty or NaN); only an entirely empty row may mark a missing modality",
            file=rel,
            column=_col_name(names, k, positions[k]),
            row=raw.lines[i],
            kind="missing values",
        )
    # nan_to_num maps inf to the float64 maximum, so one comparison catches inf and
    # values that would overflow float32.
    huge = np.abs(np.nan_to_num(values)) > np.finfo(np.float32).max
    for i, k in np.argwhere(huge):
        out.error(
            f"infinite or out-of-range value {float(values[i, k])!r}",
            file=rel,
            column=_col_name(names, k, positions[k]),
            row=raw.lines[i],
            kind="infinite values",
        )
    if present.sum() >= 2:
        live = values[present]
        with warnings.catch_warnings():
            # All-NaN columns are reported above; numpy would warn about them again.
            warnings.simplefilter("ignore", RuntimeWarning)
            top = np.nanmax(live, axis=0)
            const = (top == np.nanmin(live, axis=0)) & ~dead
        for k in np.flatnonzero(const):
            out.warning(
                f"constant column (every patient has {top[k]:g}): no information at this "
                "site; fine for e.g. a one-hot clinical column",
                file=rel,
                column=_col_name(names, k, positions[k]),
                kind="constant columns",
            )
    if empty_rows.any():
        idx = np.flatnonzero(empty_rows)
        out.warning(
            f"{len(idx)} patient(s) have an entirely empty row and are treated as lacking "
            f"this modality: {_examples([ids[i] for i in idx], raw.lines[idx])}",
            file=rel,
            row=raw.lines[idx[0]],
        )
    if names is None:
        return None
    # astype copies: the frame's array may be a read-only view.
    matrix = values.astype(np.float32)
    matrix[~present] = 0.0
    return _Table(rel, ids, raw.lines, names, matrix, present)


def _is_numeric(col: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col)


def _col_name(names: list[str] | None, k: int, position: int) -> str:
    return names[k] if names is not None else f"#{position + 1}"


def _examples(ids: list[str], lines: np.ndarray | list[int] | None = None) -> str:
    shown = []
    for i, pid in enumerate(ids[:_EXAMPLES]):
        shown.append(f"{pid!r}" + (f" (row {int(lines[i])})" if lines is not None else ""))
    more = f", ... ({len(ids) - _EXAMPLES} more)" if len(ids) > _EXAMPLES else ""
    return ", ".join(shown) + more


def _preview(items: list[str], k: int = 8) -> str:
    return ", ".join(repr(x) for x in items[:k]) + (", ..." if len(items) > k else "")


# ------------------------------------------------------------------------ inspection


@dataclass
class _Part:
    """One split, read and cross-checked."""

    name: str | None
    labels_file: str
    label_ids: list[str] | None = None
    label_values: list[str] | None = None
    label_lines: np.ndarray | None = None
    label_column: str | None = None
    tables: dict[str, _Table] = field(default_factory=dict)
    ids: list[str] = field(default_factory=list)
    codes: np.ndarray | None = None


def _read_labels(
    directory: Path, spec: TableSpec, prefix: str, part: _Part, out: _Findings
) -> None:
    rel = spec.file
    raw = _read_csv(directory, spec, out, text=True)
    if raw is None:
        return
    if len(raw.frame) == 0:
        out.error("no data rows (zero patients)", file=rel)
        return
    others = [c for c in range(raw.frame.shape[1]) if c != raw.id_pos]
    col = spec.column
    if isinstance(col, str):
        assert raw.header is not None
        if col not in raw.header:
            out.error(
                f"no label column named {col!r}; columns: {_preview(raw.header)}", file=rel, row=1
            )
            return
        pos = raw.header.index(col)
    elif col is not None:
        if col >= raw.frame.shape[1] or col == raw.id_pos:
            out.error(f"label column {col} is not a data column of this file", file=rel)
            return
        pos = col
    elif raw.header and "label" in raw.header:
        pos = raw.header.index("label")
    elif len(others) == 1:
        pos = others[0]
    else:
        out.error(
            "cannot tell which column holds the labels; name it 'label' (or set "
            "[labels] column in a manifest)",
            file=rel,
            row=1 if raw.header else None,
        )
        return
    part.label_ids = _ids(raw, prefix, rel, out)
    part.label_values = [str(v).strip() for v in raw.frame[pos].tolist()]
    part.label_lines = raw.lines
    part.label_column = raw.header[pos] if raw.header else None


def _inspect_part(
    directory: Path, man: Manifest, lay: SplitLayout, out: _Findings, require_labels: bool
) -> _Part:
    prefix = lay.name or "row"
    part = _Part(lay.name, lay.labels.file)
    in_split = f" of split {lay.name!r}" if lay.name else ""
    if (directory / lay.labels.file).is_file():
        _read_labels(directory, lay.labels, prefix, part, out)
    elif require_labels:
        hint = (
            f" (expected {LABELS_FILE} with columns patient_id,label; for another layout "
            f"add {MANIFEST_NAME} or pass a manifest)"
            if man.source is None
            else ""
        )
        out.error(
            f"labels file {lay.labels.file!r}{in_split} not found in {directory}{hint}",
            file=lay.labels.file,
        )
    if not lay.modalities:
        out.error(f"no modality file (*.csv other than {LABELS_FILE}) in {directory}")
    for m, spec in lay.modalities:
        if not (directory / spec.file).is_file():
            out.warning(
                f"file not found: modality {m!r} is absent for every patient{in_split}",
                file=spec.file,
            )
            continue
        table = _read_modality(directory, spec, prefix, out)
        if table is not None:
            part.tables[m] = table
    if lay.modalities and not any((directory / s.file).is_file() for _, s in lay.modalities):
        out.error(f"none of the modality files{in_split} exists in {directory}")

    if part.label_ids is not None:
        part.ids = part.label_ids
        labelled = set(part.ids)
        for table in part.tables.values():
            # Empty ids are reported already.
            extra = [i for i, pid in enumerate(table.ids) if pid and pid not in labelled]
            if extra:
                out.error(
                    f"{len(extra)} patient(s) are in {table.file} but not in the labels file "
                    f"{part.labels_file}: "
                    f"{_examples([table.ids[i] for i in extra], table.lines[extra])}",
                    file=table.file,
                    row=table.lines[extra[0]],
                )
            have = set(table.ids)
            absent = [pid for pid in part.ids if pid and pid not in have]
            if absent:
                out.warning(
                    f"{len(absent)} of {len(labelled)} labelled patient(s) have no row in "
                    f"{table.file} and are treated as lacking it: {_examples(absent)}",
                    file=table.file,
                )
    else:
        seen: dict[str, None] = {}
        for table in part.tables.values():
            seen.update(dict.fromkeys(table.ids))
        part.ids = list(seen)
    return part


def _label_index(value: str) -> int | None:
    """A label as a class index: None if not a number, -1 if not a valid index."""
    try:
        x = float(value)
    except ValueError:
        return None
    return int(x) if x.is_integer() and x >= 0 else -1


def _parse_labels(
    parts: list[_Part], man: Manifest, schema: FeatureSchema | None, out: _Findings
) -> tuple[str, ...] | None:
    """Set ``part.codes`` for every labelled part; return the class names (None on error)."""
    labelled = [p for p in parts if p.label_values is not None]
    if not labelled:
        return man.label_names
    names = man.label_names
    # Per part and row: the class index if the label is a number, else None (a name).
    index_of = {
        id(p): [None if names and v in names else _label_index(v) for v in p.label_values]
        for p in labelled
    }
    n_numeric = sum(x is not None for p in labelled for x in index_of[id(p)])
    n_total = sum(len(p.label_values) for p in labelled)
    # Without label_names, labels are all class indices or all class names; the minority
    # kind is taken for typos.
    numeric_mode = n_numeric * 2 >= n_total
    n_bad = 0
    for p in labelled:
        for i, (v, x) in enumerate(zip(p.label_values, index_of[id(p)], strict=True)):
            if not v:
                why = "empty label"
            elif x == -1:
                why = "a class index must be a non-negative integer"
            elif names is not None:
                if x is None:
                    why = f"unknown class; expected one of {list(names)} or an index"
                elif x >= len(names):
                    why = f"class index out of range 0..{len(names) - 1} ({list(names)})"
                else:
                    continue
            elif numeric_mode and x is None:
                why = "not a class index like the other labels"
            elif not numeric_mode and x is not None:
                why = "a number among class-name labels"
            else:
                continue
            n_bad += 1
            out.error(
                f"label {v!r}: {why}",
                file=p.labels_file,
                column=p.label_column,
                row=p.label_lines[i],
                kind="bad labels",
            )
    if n_bad:
        return None
    if names is None:
        if numeric_mode:
            top = max(x for p in labelled for x in index_of[id(p)])
            names = tuple(str(k) for k in range(top + 1))
            if schema is not None and names != schema.label_names[: len(names)]:
                out.error(
                    "labels are class indices but the dataset has no label_names to map them "
                    f"to the model's classes {list(schema.label_names)}; write class names "
                    f"in the labels file or set [dataset] label_names in {MANIFEST_NAME}",
                    file=labelled[0].labels_file,
                )
                return None
        else:
            names = tuple(sorted({v for p in labelled for v in p.label_values}))
    position = {nm: k for k, nm in enumerate(names)}
    for p in labelled:
        p.codes = np.array(
            [
                position[v] if x is None else x
                for v, x in zip(p.label_values, index_of[id(p)], strict=True)
            ],
            dtype=np.int64,
        )
    return names


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
    out = _Findings()
    report = ValidationReport(directory, [], 0, {}, split=split)

    def done(data: MultiOmicsData | None) -> tuple[MultiOmicsData | None, ValidationReport]:
        report.findings = out.finish()
        return (data if report.ok else None), report

    if not directory.is_dir():
        alias = str(directory)
        hint = ""
        if alias.lower() in BUNDLED:
            hint = f"; {alias!r} is a bundled alias: pass common.paths.resolve_data_dir({alias!r})"
        out.error(f"{directory} is not a directory{hint}")
        return done(None)
    try:
        man = read_manifest(directory, manifest)
    except DatasetError as e:
        return None, replace(e.report, directory=directory, split=split)
    report.manifest = man.source
    if split is not None and split not in man.splits:
        have = f"its splits are {list(man.splits)}" if man.splits else "it has no splits"
        out.error(f"unknown split {split!r}: {have}")
        return done(None)
    layouts = [man.layout(split)] if split is not None else list(man.layouts)
    parts = [_inspect_part(directory, man, lay, out, require_labels) for lay in layouts]
    label_names = _parse_labels(parts, man, schema, out)
    labelled = all(p.label_values is not None for p in parts)
    data = _assemble(parts, man, label_names if labelled else None, schema, report, out)
    if data is not None and data.labels is not None:
        counts = data.class_counts()
        report.classes = {nm: int(c) for nm, c in zip(data.schema.label_names, counts, strict=True)}
    return done(data)


def _assemble(
    parts: list[_Part],
    man: Manifest,
    label_names: tuple[str, ...] | None,
    schema: FeatureSchema | None,
    report: ValidationReport,
    out: _Findings,
) -> MultiOmicsData | None:
    """Concatenate the parts, run the cross-file and schema checks, build the data."""
    present = [m for m in man.modality_names if any(m in p.tables for p in parts)]
    features: dict[str, list[str]] = {}
    for m in present:
        ref = next(p.tables[m] for p in parts if m in p.tables)
        features[m] = ref.features
        for p in parts:
            t = p.tables.get(m)
            if t is None or t is ref or t.features == ref.features:
                continue
            mine, theirs = set(t.features), set(ref.features)
            missing = [f for f in ref.features if f not in mine]
            extra = [f for f in t.features if f not in theirs]
            if missing or extra:
                out.error(
                    f"feature names differ from {ref.file}: {len(missing)} missing "
                    f"({_preview(missing)}), {len(extra)} unexpected ({_preview(extra)})",
                    file=t.file,
                )
            else:
                pos = {f: j for j, f in enumerate(t.features)}
                t.values = t.values[:, [pos[f] for f in ref.features]]
                t.features = ref.features

    ids = [pid for p in parts for pid in p.ids]
    n = len(ids)
    blocks = {m: np.zeros((n, len(features[m])), dtype=np.float32) for m in present}
    mask = np.zeros((n, len(present)), dtype=bool)
    start = 0
    for p in parts:
        rows = slice(start, start + len(p.ids))
        for j, m in enumerate(present):
            t = p.tables.get(m)
            if t is None:
                continue
            where: dict[str, int] = {}
            for i, pid in enumerate(t.ids):
                # First occurrence wins; duplicates are reported already.
                where.setdefault(pid, i)
            idx = np.array([where.get(pid, -1) for pid in p.ids], dtype=np.int64)
            has = idx >= 0
            # Basic slicing gives views, so these assignments fill blocks and mask.
            blocks[m][rows][has] = t.values[idx[has]]
            mask[rows, j][has] = t.present[idx[has]]
        nothing = ~mask[rows].any(axis=1) if present else np.ones(len(p.ids), dtype=bool)
        lost = [p.ids[i] for i in np.flatnonzero(nothing) if p.ids[i]]
        if lost and p.tables:
            out.error(
                f"{len(lost)} patient(s) have no modality at all: {_examples(lost)}",
                file=p.labels_file if p.label_ids is not None else None,
            )
        start += len(p.ids)

    if len(parts) > 1:
        dup = pd.Series(ids).duplicated(keep=False).to_numpy()
        if dup.any():
            where_dup = sorted({ids[i] for i in np.flatnonzero(dup)})
            out.error(
                f"{len(where_dup)} patient id(s) appear in more than one split: "
                f"{_examples(where_dup)}"
            )

    report.n_patients = n
    for j, m in enumerate(present):
        report.modalities[m] = {
            "file": ", ".join(p.tables[m].file for p in parts if m in p.tables),
            "n_features": len(features[m]),
            "n_patients_present": int(mask[:, j].sum()),
        }
    labels = None
    if label_names is not None and all(p.codes is not None for p in parts):
        labels = np.concatenate([p.codes for p in parts]).astype(np.int64)

    if schema is not None:
        _check_schema(schema, present, features, report, labels, label_names, parts, out)
    if out.has_errors:
        return None
    if n == 0:
        out.error("the dataset has no patients")
        return None

    patient_ids = np.array(ids, dtype=str)
    if schema is None:
        own = FeatureSchema.build({m: features[m] for m in present}, list(label_names or ()))
        return MultiOmicsData(patient_ids, blocks, mask, labels, own)
    # Express the data with exactly the schema's modalities first (absent ones as masked
    # zero blocks) so that align_to only reorders features and relabels; the warnings
    # about absent or ignored modalities are already in the report.
    names = schema.modality_names
    inter = FeatureSchema.build(
        {m: features[m] if m in features else list(schema.features(m)) for m in names},
        # Unlabelled data takes the model's classes (align_to relabels only labels).
        list(label_names) if labels is not None and label_names else list(schema.label_names),
    )
    inter_blocks = {
        m: blocks[m] if m in blocks else np.zeros((n, len(schema.features(m))), np.float32)
        for m in names
    }
    inter_mask = np.zeros((n, len(names)), dtype=bool)
    for j, m in enumerate(names):
        if m in present:
            inter_mask[:, j] = mask[:, present.index(m)]
    data = MultiOmicsData(patient_ids, inter_blocks, inter_mask, labels, inter)
    return data.align_to(schema, source=str(report.directory))


def _check_schema(
    schema: FeatureSchema,
    present: list[str],
    features: dict[str, list[str]],
    report: ValidationReport,
    labels: np.ndarray | None,
    label_names: tuple[str, ...] | None,
    parts: list[_Part],
    out: _Findings,
) -> None:
    for m in schema.modality_names:
        if m not in present:
            out.warning(
                f"modality {m!r}, which the model uses, is absent: every patient is masked for it"
            )
            report.modalities[m] = {
                "file": None,
                "n_features": len(schema.features(m)),
                "n_patients_present": 0,
            }
            continue
        try:
            schema.check_features(m, features[m])
        except SchemaMismatchError as e:
            out.error(str(e), file=report.modalities[m]["file"])
    for m in present:
        if m not in schema.modality_names:
            out.warning(
                f"modality {m!r} is not in the model's schema and is ignored",
                file=report.modalities[m]["file"],
            )
    if not any(m in present for m in schema.modality_names):
        out.error(f"none of the model's modalities {schema.modality_names} is present")
    if labels is not None and label_names is not None:
        used = [label_names[k] for k in np.unique(labels)]
        unknown = [nm for nm in used if nm not in schema.label_names]
        if unknown:
            files = ", ".join(dict.fromkeys(p.labels_file for p in parts))
            out.error(
                f"labels {unknown} are not among the model's classes {list(schema.label_names)}",
                file=files,
            )


def load_dataset(
    directory: Path | str,
    *,
    split: str | None = None,
    manifest: Path | None = None,
    schema: FeatureSchema | None = None,
    require_labels: bool = True,
) -> MultiOmicsData:
    """Like :func:`inspect_dataset`, but raise :class:`DatasetError` on errors and log
    the warnings."""
    data, report = inspect_dataset(
        directory, split=split, manifest=manifest, schema=schema, require_labels=require_labels
    )
    for f in report.warnings:
        logger.warning("%s: %s", report.directory, f)
    if data is None:
        raise DatasetError(report)
    return data


# ---------------------------------------------------------------------------- helpers


def dataset_fingerprint(directory: Path | str, *, manifest: Path | None = None) -> dict[str, str]:
    """SHA-256 of every file the dataset reads (all splits) and of its manifest.

    Keys are file names relative to ``directory``; a manifest outside the directory is
    keyed ``manifest:<file name>``.
    """
    directory = Path(directory)
    man = read_manifest(directory, manifest)
    out: dict[str, str] = {}
    for rel in man.files():
        path = directory / rel
        if path.is_file():
            out[rel] = _sha256(path)
    if man.source is not None:
        src = man.source.resolve()
        try:
            key = src.relative_to(directory.resolve()).as_posix()
        except ValueError:
            key = f"manifest:{src.name}"
        out[key] = _sha256(src)
    return dict(sorted(out.items()))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def site_codes(data: MultiOmicsData, pattern: str) -> np.ndarray:
    """Per-patient site code: group 1 of ``pattern`` searched in each patient id.

    Raises :class:`ValueError` naming example ids that do not match.
    """
    if not pattern:
        raise ValueError("this dataset has no site pattern: its patient ids carry no site code")
    regex = re.compile(pattern)
    if regex.groups != 1:
        raise ValueError(f"site pattern {pattern!r} must have exactly one group")
    codes, unmatched = [], []
    for pid in data.patient_ids:
        m = regex.search(str(pid))
        if m is None or not m.group(1):
            unmatched.append(str(pid))
            codes.append("")
        else:
            codes.append(m.group(1))
    if unmatched:
        raise ValueError(
            f"{len(unmatched)} of {data.n} patient id(s) do not match the site pattern "
            f"{pattern!r}: {_examples(unmatched)}"
        )
    return np.array(codes, dtype=str)
