"""Labels: reading a labels file and turning its values into class indices.

Class names come from the manifest's ``label_names`` when given; otherwise they are the
sorted distinct string labels, or ``"0".."k"`` for integer labels. Integer labels are
never mapped onto a model's class names by guessing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.dataset.findings import Findings, preview
from common.dataset.manifest import MANIFEST_NAME, Manifest, TableSpec
from common.dataset.reading import Table, read_ids, read_table
from common.schema import FeatureSchema


@dataclass
class Part:
    """One split, read and cross-checked."""

    name: str | None
    labels_file: str
    label_ids: list[str] | None = None
    label_values: list[str] | None = None
    label_lines: np.ndarray | None = None
    label_column: str | None = None
    tables: dict[str, Table] = field(default_factory=dict)
    ids: list[str] = field(default_factory=list)
    codes: np.ndarray | None = None


def read_labels(
    directory: Path, spec: TableSpec, prefix: str, part: Part, out: Findings
) -> None:
    """Read one split's labels file into ``part`` (ids, raw values, line numbers)."""
    rel = spec.file
    raw = read_table(directory, spec, out, text=True)
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
                f"no label column named {col!r}; columns: {preview(raw.header)}", file=rel, row=1
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
    part.label_ids = read_ids(raw, prefix, rel, out)
    part.label_values = [str(v).strip() for v in raw.frame[pos].tolist()]
    part.label_lines = raw.lines
    part.label_column = raw.header[pos] if raw.header else None



def _label_index(value: str) -> int | None:
    """A label as a class index: None if not a number, -1 if not a valid index."""
    try:
        x = float(value)
    except ValueError:
        return None
    return int(x) if x.is_integer() and x >= 0 else -1


def parse_labels(
    parts: list[Part], man: Manifest, schema: FeatureSchema | None, out: Findings
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
                if x is None and v in names:
                    continue
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
