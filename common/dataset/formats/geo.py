"""GEO series matrix (``GSE*_series_matrix.txt``, optionally ``.gz``).

Tab-separated text: ``!Series_*`` lines, ``!Sample_*`` lines (one value per sample, in
quotes), then a table between ``!series_matrix_table_begin`` and
``!series_matrix_table_end`` whose header is ``"ID_REF"`` followed by the samples' GSM
accessions, one row per feature (probe). The table is transposed here (patients are
rows). ``sample_id`` names the ``!Sample_`` line whose values become the patient ids
(default ``!Sample_geo_accession``, which must match the table's columns). Empty and
``null`` cells are missing values.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from common.dataset.findings import Findings
from common.dataset.formats.matrix import Matrix, numeric, open_text, unique_names
from common.dataset.manifest import TableSpec

BEGIN = "!series_matrix_table_begin"
END = "!series_matrix_table_end"
ACCESSION = "!Sample_geo_accession"


def _cells(line: str) -> list[str]:
    return next(csv.reader([line.rstrip("\r\n")], delimiter="\t"))


def read_matrix(directory: Path, spec: TableSpec, out: Findings) -> Matrix | None:
    rel = spec.file
    id_line = spec.option("sample_id")
    headers: dict[str, tuple[int, list[str]]] = {}
    rows: list[list[str]] = []
    begin = end = None
    try:
        with open_text(directory / rel) as fh:
            for number, line in enumerate(fh, start=1):
                if begin is None:
                    if line.startswith(BEGIN):
                        begin = number
                    elif line.startswith("!Sample_"):
                        cells = _cells(line)
                        headers.setdefault(cells[0], (number, cells[1:]))
                    continue
                if line.startswith(END):
                    end = number
                    break
                rows.append(_cells(line))
    except (OSError, UnicodeDecodeError, EOFError, csv.Error) as e:
        out.error(f"cannot read the file: {e}", file=rel)
        return None
    if begin is None:
        out.error(f"no {BEGIN} line: not a GEO series matrix", file=rel)
        return None
    if end is None:
        out.error(f"no {END} line: the file is cut short", file=rel)
        return None
    if not rows or not rows[0] or rows[0][0] != "ID_REF":
        out.error('the table must start with a header "ID_REF" and the sample accessions',
                  file=rel, row=begin + 1)
        return None
    header_line = begin + 1
    samples = [s.strip() for s in rows[0][1:]]
    body = rows[1:]
    width = len(samples) + 1
    ragged = [k for k, cells in enumerate(body) if len(cells) != width]
    for k in ragged:
        out.error(f"{len(body[k])} cells, the header has {width}", file=rel,
                  row=header_line + 1 + k, kind="ragged rows")
    if ragged:
        return None
    ids = samples
    if id_line != ACCESSION or ACCESSION in headers:
        if id_line not in headers:
            out.error(f"no {id_line} line (sample_id)", file=rel)
            return None
        number, values = headers[id_line]
        values = [v.strip() for v in values]
        accessions = [v.strip() for v in headers.get(ACCESSION, (0, samples))[1]]
        if accessions != samples:
            out.error(f"the {ACCESSION} line does not list the table's columns in order",
                      file=rel, row=headers[ACCESSION][0])
            return None
        if len(values) != len(samples):
            out.error(f"{id_line} has {len(values)} values for {len(samples)} samples",
                      file=rel, row=number)
            return None
        ids = values
    lines = np.full(len(samples), header_line, dtype=np.int64)
    if not unique_names(ids, rel, "ID_REF", lines, out, what="sample"):
        return None
    features = [r[0].strip() for r in body]
    feature_lines = np.arange(len(body)) + header_line + 1
    if not unique_names(features, rel, "ID_REF", feature_lines, out):
        return None
    values = np.empty((len(samples), len(features)))
    frame = pd.DataFrame([r[1:] for r in body], columns=samples, dtype=str)
    for j, sample in enumerate(samples):
        values[j] = numeric(frame[sample], rel, sample, feature_lines, out)
    return Matrix(rel, ids, lines, features, values, "value")


def files_read(directory: Path, spec: TableSpec) -> list[str]:
    return []
