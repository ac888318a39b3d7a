"""A format reader's matrix checked and turned into a modality table.

The checks match the CSV reader's (:mod:`common.dataset.reading`): a row with no value
at all means the patient lacks the modality (masked); a feature with no value at all,
infinite values and (with ``qc.missing = "error"``) missing values inside a row are
errors naming the file, column and row.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np

from common.dataset.findings import Findings, examples
from common.dataset.formats.matrix import Matrix, trim_ids
from common.dataset.formats.registry import MODULES
from common.dataset.manifest import TableSpec
from common.dataset.reading import Table, finish_table


def reader(fmt: str):
    """The module that reads format ``fmt``."""
    return importlib.import_module(f"common.dataset.formats.{MODULES[fmt]}")


def read_format(directory: Path, spec: TableSpec, out: Findings) -> Table | None:
    """Read one modality file of a non-CSV format as a checked :class:`Table`."""
    errors_before = out.n_errors
    matrix = reader(spec.format).read_matrix(directory, spec, out)
    if matrix is None or out.n_errors > errors_before:
        return None
    matrix = trim_ids(matrix, spec.option("id_length"), out)
    if matrix is None:
        return None
    return check_matrix(matrix, spec, out)


def files_read(directory: Path, spec: TableSpec) -> list[str]:
    """Files besides ``spec.file`` that reading ``spec`` opens (per-sample files...)."""
    if spec.format == "csv":
        return []
    return reader(spec.format).files_read(directory, spec)


def check_matrix(m: Matrix, spec: TableSpec, out: Findings) -> Table | None:
    rel, values = m.file, m.values
    errors_before = out.n_errors
    if not m.ids:
        out.error("no data rows (zero patients)", file=rel)
        return None
    missing = np.isnan(values)
    present = ~missing.all(axis=1)
    if not present.any():
        out.error("no patient has a value in this file", file=rel)
        return None
    dead = missing[present].all(axis=0)
    if spec.qc.missing == "drop-feature":
        dead[:] = False  # dropped by QC like any feature with a missing value
    for k in np.flatnonzero(dead):
        out.error("feature has no value at all", file=rel, column=m.features[k],
                  kind="all-missing columns")
    if spec.qc.missing == "error":
        partial = missing & present[:, None] & ~dead[None, :]
        for i, k in np.argwhere(partial):
            out.error(
                f"missing value for patient {m.ids[i]!r}; set qc.missing to drop the feature "
                "or mask the patient",
                file=rel, column=m.features[k], row=m.lines[i], kind="missing values",
            )
    huge = np.abs(np.nan_to_num(values)) > np.finfo(np.float32).max
    for i, k in np.argwhere(huge):
        out.error(f"infinite or out-of-range value {float(values[i, k])!r}", file=rel,
                  column=m.features[k], row=m.lines[i], kind="infinite values")
    if not present.all():
        idx = np.flatnonzero(~present)
        out.warning(
            f"{len(idx)} patient(s) have no value at all and are treated as lacking this "
            f"modality: {examples([m.ids[i] for i in idx], m.lines[idx])}",
            file=rel, row=m.lines[idx[0]],
        )
    if out.n_errors > errors_before:
        return None
    return finish_table(rel, m.ids, m.lines, m.features, values, present, spec,
                        m.value_name, out)
