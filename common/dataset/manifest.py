"""Manifests: the parsed layout of a dataset directory, and the convention layout.

The keys are documented in :mod:`common.dataset`. Parsing is pure (a TOML document in,
a :class:`Manifest` out, plus the directory listing for a manifest without modalities);
which manifest a directory gets is decided in :mod:`common.dataset.lookup`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.dataset.formats.registry import CSV, FORMATS, check_options, option_keys
from common.dataset.qc import QcSettings

TCGA_SITE_PATTERN = r"^TCGA-([A-Z0-9]{2})-"
MANIFEST_NAME = "dataset.toml"
LABELS_FILE = "labels.csv"
# DatasetOrigin.manifest_source of a directory read without a manifest.
CONVENTION = "convention"


@dataclass(frozen=True)
class TableSpec:
    """How to read one file (a CSV, or another format for a modality)."""

    file: str
    header: bool = True
    index_column: str | int | None = 0  # None: no id column
    delimiter: str = ","
    column: str | int | None = None  # labels only: the label column
    feature_names_file: str | None = None  # modalities only
    format: str = CSV  # modalities only: see common.dataset.formats
    options: tuple[tuple[str, Any], ...] = ()  # the format's keys (value, layer, ...)
    qc: QcSettings = field(default_factory=QcSettings)  # modalities only

    def option(self, key: str, default: Any = None) -> Any:
        return dict(self.options).get(key, default)


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
    # How the manifest was chosen for the directory (DatasetOrigin.manifest_source)
    # and the SHA-256 of its file (None for the convention).
    chosen_by: str = CONVENTION
    sha256: str | None = None
    # [fairness]: clinical columns to judge fairness by, and bin edges of numeric ones
    subgroups: tuple[str, ...] = ()
    subgroup_bins: tuple[tuple[str, tuple[float, ...]], ...] = ()

    def layout(self, split: str | None) -> SplitLayout:
        for lay in self.layouts:
            if lay.name == split:
                return lay
        raise KeyError(split)

    def layouts_of(self, split: str | None) -> list[SplitLayout]:
        """The layouts a load of ``split`` reads (None: every split)."""
        return [self.layout(split)] if split is not None else list(self.layouts)

    def files(self, *, labels: bool = True, split: str | None = None) -> list[str]:
        """Every file this manifest names for ``split`` (None: all), in a stable order."""
        seen: dict[str, None] = {}
        for lay in self.layouts_of(split):
            if labels:
                seen[lay.labels.file] = None
            for _, spec in lay.modalities:
                seen[spec.file] = None
                if spec.feature_names_file:
                    seen[spec.feature_names_file] = None
        return list(seen)


class ManifestError(Exception):
    """A manifest document breaks the rules; the message names the key."""


_READ_KEYS = ("header", "index_column", "delimiter")
_LABEL_KEYS = (*_READ_KEYS, "file", "column")
# Every format-specific key; which of them a modality may use depends on its format.
_FORMAT_KEYS = tuple(dict.fromkeys(k for f in FORMATS if f != CSV for k in option_keys(f)))
_MODALITY_KEYS = (*_READ_KEYS, "file", "feature_names_file", "format", "qc", *_FORMAT_KEYS)


def _check_keys(table: Any, allowed: tuple[str, ...], where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ManifestError(f"{where} must be a table")
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise ManifestError(f"{where}: unknown key(s) {unknown}; allowed: {list(allowed)}")
    return table


def _check_options(opts: dict[str, Any], where: str) -> dict[str, Any]:
    for key, value in opts.items():
        if key == "header" and not isinstance(value, bool):
            raise ManifestError(f"{where}: header must be true or false")
        if key == "index_column" and not (
            value is False or isinstance(value, str) or _is_position(value)
        ):
            raise ManifestError(
                f"{where}: index_column must be a column name, a 0-based position or false"
            )
        if key == "column" and not (isinstance(value, str) or _is_position(value)):
            raise ManifestError(f"{where}: column must be a column name or a 0-based position")
        if key == "delimiter" and not (isinstance(value, str) and len(value) == 1):
            raise ManifestError(f"{where}: delimiter must be one character")
        if key in ("file", "feature_names_file") and not (isinstance(value, str) and value):
            raise ManifestError(f"{where}: {key} must be a non-empty string")
    return opts


def _is_position(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _entry(value: Any, allowed: tuple[str, ...], where: str) -> dict[str, Any]:
    """A file entry: either ``"file.csv"`` or a table of options."""
    if isinstance(value, str):
        return {"file": value}
    return _check_options(dict(_check_keys(value, allowed, where)), where)


def _modality_spec(
    defaults: dict[str, Any], opts: dict[str, Any], where: str
) -> TableSpec:
    """A modality's spec: a CSV with the defaults applied, or another format."""
    fmt = opts.get("format", CSV)
    if fmt not in FORMATS:
        raise ManifestError(f"{where}: unknown format {fmt!r}; known: {list(FORMATS)}")
    qc_table = opts.get("qc", {})
    try:
        qc = QcSettings.parse(qc_table, where)
        fmt_keys = {k: v for k, v in opts.items() if k in _FORMAT_KEYS}
        allowed = option_keys(fmt) if fmt != CSV or fmt_keys else ()
        wrong = sorted(set(fmt_keys) - set(allowed))
        if wrong:
            raise ValueError(f"{where}: key(s) {wrong} do not apply to format {fmt!r}")
        options = check_options(fmt, fmt_keys, where) if fmt != CSV else {}
    except ValueError as e:
        raise ManifestError(str(e)) from None
    if fmt == CSV:
        base = _spec({**defaults, **opts}, where)
    else:
        csv_only = sorted(k for k in (*_READ_KEYS, "feature_names_file") if k in opts)
        if csv_only:
            raise ManifestError(f"{where}: {csv_only} apply only to format 'csv'")
        base = TableSpec(file=opts["file"])
    return TableSpec(
        file=base.file,
        header=base.header,
        index_column=base.index_column,
        delimiter=base.delimiter,
        feature_names_file=base.feature_names_file,
        format=fmt,
        options=tuple(sorted(options.items(), key=lambda kv: kv[0])),
        qc=qc,
    )


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
                raise ManifestError(
                    f"{where}: {key} {getattr(spec, key)!r} is a name but the file has no "
                    "header; use a 0-based position"
                )
    return spec


def parse_manifest(
    doc: dict[str, Any], source: Path | None, directory: Path | None = None
) -> Manifest:
    """Validate a manifest document; raise :class:`ManifestError` naming the bad key.

    ``directory`` supplies the convention modalities of a manifest that declares none.
    """
    _check_keys(doc, ("dataset", "defaults", "labels", "modalities", "splits", "fairness"),
                "manifest")
    from common.dataset.manifest_fairness import parse_fairness

    subgroups, subgroup_bins = parse_fairness(doc.get("fairness", {}))
    ds = _check_keys(doc.get("dataset"), ("name", "label_names", "site_pattern"), "[dataset]")
    name = ds.get("name")
    if not isinstance(name, str) or not name:
        raise ManifestError("[dataset] name is required (a non-empty string)")
    label_names = ds.get("label_names")
    if label_names is not None:
        if (
            not isinstance(label_names, list)
            or not label_names
            or not all(isinstance(x, str) and x for x in label_names)
        ):
            raise ManifestError("[dataset] label_names must be a non-empty list of strings")
        if len(set(label_names)) != len(label_names):
            raise ManifestError("[dataset] label_names has duplicates")
    site_pattern = ds.get("site_pattern", TCGA_SITE_PATTERN)
    if not isinstance(site_pattern, str):
        raise ManifestError("[dataset] site_pattern must be a string")
    if site_pattern:
        try:
            groups = re.compile(site_pattern).groups
        except re.error as e:
            raise ManifestError(f"[dataset] site_pattern is not a valid regex: {e}") from e
        if groups != 1:
            raise ManifestError(f"[dataset] site_pattern must have one group, it has {groups}")

    defaults = _check_options(
        dict(_check_keys(doc.get("defaults", {}), _READ_KEYS, "[defaults]")), "[defaults]"
    )
    labels_top = _check_options(
        dict(_check_keys(doc.get("labels", {}), _LABEL_KEYS, "[labels]")), "[labels]"
    )
    mods_raw = doc.get("modalities", {})
    if not isinstance(mods_raw, dict):
        raise ManifestError("[modalities] must be a table")
    mods_top = {m: _entry(v, _MODALITY_KEYS, f"[modalities.{m}]") for m, v in mods_raw.items()}
    order = list(mods_top)

    splits_raw = doc.get("splits")
    layouts: list[SplitLayout] = []
    if splits_raw is None:
        missing = [m for m, o in mods_top.items() if "file" not in o]
        if missing:
            raise ManifestError(f"[modalities]: no file given for {missing}")
        labels = {**defaults, "file": LABELS_FILE, **labels_top}
        if not mods_top and directory is not None:
            # A manifest may only name the dataset or its classes; the modalities then
            # follow the convention.
            mods_top = {
                Path(f).stem: {"file": f}
                for f in convention_files(directory)
                if f != labels["file"]
            }
            order = list(mods_top)
        mods = tuple(
            (m, _modality_spec(defaults, o, f"[modalities.{m}]")) for m, o in mods_top.items()
        )
        layouts.append(SplitLayout(None, _spec(labels, "[labels]"), mods))
    else:
        if not isinstance(splits_raw, dict) or not splits_raw:
            raise ManifestError("[splits] must hold at least one [splits.<name>] table")
        shared = [f"[modalities.{m}]" for m, o in mods_top.items() if "file" in o]
        if "file" in labels_top:
            shared.insert(0, "[labels]")
        if shared:
            raise ManifestError(
                f"{', '.join(shared)}: with [splits], name the files in each split"
            )
        for split, sv in splits_raw.items():
            where = f"[splits.{split}]"
            sv = _check_keys(sv, ("labels", "modalities"), where)
            if "labels" not in sv:
                raise ManifestError(f"{where}: labels (the labels file) is required")
            lab = _entry(sv["labels"], _LABEL_KEYS, f"{where} labels")
            smods_raw = sv.get("modalities", {})
            if not isinstance(smods_raw, dict):
                raise ManifestError(f"{where}: modalities must be a table")
            smods = {
                m: _entry(v, _MODALITY_KEYS, f"{where} modalities.{m}")
                for m, v in smods_raw.items()
            }
            order += [m for m in smods if m not in order]
            lacking = [m for m in order if m not in smods]
            if lacking:
                raise ManifestError(f"{where}: no file named for modality {lacking}")
            mods = tuple(
                (m, _modality_spec(defaults, _merged(mods_top.get(m, {}), smods[m]),
                                   f"{where} {m}"))
                for m in order
            )
            labels_spec = _spec({**defaults, **labels_top, **lab}, f"{where} labels")
            layouts.append(SplitLayout(split, labels_spec, mods))
        for lay in layouts:
            if [m for m, _ in lay.modalities] != order:
                raise ManifestError(
                    f"[splits.{lay.name}]: no file named for modality "
                    f"{[m for m in order if m not in dict(lay.modalities)]}"
                )
    if not order:
        raise ManifestError("[modalities]: the manifest declares no modality")
    for lay in layouts:
        where = f"[splits.{lay.name}]" if lay.name else "manifest"
        for m, spec in lay.modalities:
            if not spec.header and not spec.feature_names_file:
                raise ManifestError(
                    f"{where} modality {m!r}: a file without header needs feature_names_file"
                )
            if spec.header and spec.feature_names_file:
                raise ManifestError(
                    f"{where} modality {m!r}: feature_names_file is only for header = false"
                )
        has_ids = {spec.index_column is not None for _, spec in lay.modalities}
        has_ids.add(lay.labels.index_column is not None)
        if len(has_ids) > 1:
            raise ManifestError(
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
        subgroups=subgroups,
        subgroup_bins=subgroup_bins,
    )



def files_read(directory: Path, man: Manifest, split: str | None = None) -> list[str]:
    """Every file a load of ``split`` reads: the manifest's, plus per-sample files of
    non-CSV formats (found through their sample sheets), in a stable order."""
    from common.dataset.formats.tables import files_read as format_files

    seen = dict.fromkeys(man.files(split=split))
    for lay in man.layouts_of(split):
        for _, spec in lay.modalities:
            if spec.format != CSV and (directory / spec.file).is_file():
                seen.update(dict.fromkeys(format_files(directory, spec)))
    return list(seen)


def _merged(shared: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    """A split's modality options over the shared ones (``qc`` tables merged by key)."""
    out = {**shared, **own}
    if "qc" in shared and "qc" in own:
        if not isinstance(shared["qc"], dict) or not isinstance(own["qc"], dict):
            raise ManifestError("qc must be a table")
        out["qc"] = {**shared["qc"], **own["qc"]}
    return out


def convention_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.csv") if p.is_file())


def convention_manifest(directory: Path) -> Manifest:
    """Every ``*.csv`` but ``labels.csv`` is a modality named by its stem."""
    files = [f for f in convention_files(directory) if f != LABELS_FILE]
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
