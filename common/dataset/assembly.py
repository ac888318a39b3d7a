"""Assembling a dataset: the files of each split read and cross-checked, then joined
into one :class:`MultiOmicsData` (optionally aligned to a model's schema)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from common.dataset.findings import Findings, ValidationReport, examples, preview
from common.dataset.formats.registry import CSV
from common.dataset.formats.tables import read_format
from common.dataset.labels import Part, read_labels
from common.dataset.manifest import LABELS_FILE, MANIFEST_NAME, Manifest, SplitLayout
from common.dataset.multiomics import MultiOmicsData
from common.dataset.reading import read_modality
from common.schema import FeatureSchema, SchemaMismatchError


def inspect_part(
    directory: Path, man: Manifest, lay: SplitLayout, out: Findings, require_labels: bool
) -> Part:
    """Read one split's labels and modality files and cross-check their patients."""
    prefix = lay.name or "row"
    part = Part(lay.name, lay.labels.file)
    in_split = f" of split {lay.name!r}" if lay.name else ""
    if (directory / lay.labels.file).is_file():
        read_labels(directory, lay.labels, prefix, part, out)
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
        if spec.format == CSV:
            table = read_modality(directory, spec, prefix, out)
        else:
            table = read_format(directory, spec, out)
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
                    f"{examples([table.ids[i] for i in extra], table.lines[extra])}",
                    file=table.file,
                    row=table.lines[extra[0]],
                )
            have = set(table.ids)
            absent = [pid for pid in part.ids if pid and pid not in have]
            if absent:
                out.warning(
                    f"{len(absent)} of {len(labelled)} labelled patient(s) have no row in "
                    f"{table.file} and are treated as lacking it: {examples(absent)}",
                    file=table.file,
                )
    else:
        seen: dict[str, None] = {}
        for table in part.tables.values():
            seen.update(dict.fromkeys(table.ids))
        part.ids = list(seen)
    return part


def assemble(
    parts: list[Part],
    man: Manifest,
    label_names: tuple[str, ...] | None,
    schema: FeatureSchema | None,
    report: ValidationReport,
    out: Findings,
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
                    f"({preview(missing)}), {len(extra)} unexpected ({preview(extra)})",
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
                f"{len(lost)} patient(s) have no modality at all: {examples(lost)}",
                file=p.labels_file if p.label_ids is not None else None,
            )
        start += len(p.ids)

    if len(parts) > 1:
        dup = pd.Series(ids).duplicated(keep=False).to_numpy()
        if dup.any():
            where_dup = sorted({ids[i] for i in np.flatnonzero(dup)})
            out.error(
                f"{len(where_dup)} patient id(s) appear in more than one split: "
                f"{examples(where_dup)}"
            )

    report.n_patients = n
    for j, m in enumerate(present):
        report.modalities[m] = {
            "file": ", ".join(p.tables[m].file for p in parts if m in p.tables),
            "n_features": len(features[m]),
            "n_patients_present": int(mask[:, j].sum()),
        }
        qc = preprocessing(parts, m)
        if qc is not None:
            report.modalities[m]["preprocessing"] = qc
    labels = None
    if label_names is not None and all(p.codes is not None for p in parts):
        labels = np.concatenate([p.codes for p in parts]).astype(np.int64)

    if schema is not None:
        check_schema(schema, present, features, report, labels, label_names, parts, out)
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


def preprocessing(parts: list[Part], modality: str) -> dict | None:
    """The QC record of ``modality`` (its first split's; None for a CSV read as is)."""
    for p in parts:
        t = p.tables.get(modality)
        if t is not None and t.qc is not None and not t.qc.trivial:
            return t.qc.record()
    return None


def check_schema(
    schema: FeatureSchema,
    present: list[str],
    features: dict[str, list[str]],
    report: ValidationReport,
    labels: np.ndarray | None,
    label_names: tuple[str, ...] | None,
    parts: list[Part],
    out: Findings,
) -> None:
    """Absent or unknown modalities, and feature or class names the model does not have."""
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
