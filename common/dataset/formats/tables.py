"""A format reader's matrix checked and turned into a modality table.

The checks are the CSV reader's (:func:`common.dataset.reading.check_values`): a row
with no value at all means the patient lacks the modality (masked); a feature with no
value at all, infinite values and (with ``qc.missing = "error"``) missing values inside a
row are errors naming the file, column and row.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from common.dataset.findings import Findings
from common.dataset.formats.matrix import Matrix, trim_ids
from common.dataset.formats.registry import MODULES
from common.dataset.manifest import TableSpec
from common.dataset.reading import Table, check_values, finish_table


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
    present = check_values(values, m.ids, m.lines, rel, spec, out, lambda k: m.features[k])
    if present is None or out.n_errors > errors_before:
        return None
    return finish_table(rel, m.ids, m.lines, m.features, values, present, spec,
                        m.value_name, out)
