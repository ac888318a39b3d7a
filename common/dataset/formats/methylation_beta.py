"""Methylation beta values (GDC ``*.methylation_array.sesame.level3betas.txt``), one
file per sample: two tab-separated columns without header, the Illumina 450k/EPIC probe
id and its beta value in [0, 1] (``NA`` = probe failed QC: a missing value).

Probe ids: ``cg`` + 8 digits (CpG), ``ch.<chr>.<n>[FR]`` (non-CpG), ``rs<n>`` (SNP
controls), ``nv.*``; EPIC v2 adds a ``_BC11``-like suffix. Other ids are errors.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from common.dataset.findings import Findings
from common.dataset.formats import per_sample
from common.dataset.formats.matrix import Matrix, numeric, read_tsv, texts, unique_names
from common.dataset.manifest import TableSpec

PROBE_ID = re.compile(r"^(cg\d{8}|ch\.[0-9XYM]+\.\d+[FR]?|rs\d+|nv\.[\w.-]+)(_[A-Z]{2}\d{2})?$")


def read_sample(path: Path, rel: str, out: Findings) -> tuple[list[str], np.ndarray] | None:
    read = read_tsv(path, rel, out, header=False)
    if read is None:
        return None
    frame, first = read
    if frame.shape[1] != 2:
        out.error(f"expected 2 columns (probe id, beta value), found {frame.shape[1]}",
                  file=rel, row=first)
        return None
    lines = np.arange(len(frame)) + first
    probes = texts(frame[0])
    keep = np.array([bool(p) for p in probes], dtype=bool)  # blank lines
    frame, lines = frame.loc[keep].reset_index(drop=True), lines[keep]
    names = [p for p, k in zip(probes, keep, strict=True) if k]
    for i, nm in enumerate(names):
        if not PROBE_ID.match(nm):
            out.error(f"not a 450k/EPIC probe id: {nm!r}", file=rel, column="#1",
                      row=lines[i], kind="bad probe ids")
    if not unique_names(names, rel, "#1", lines, out, what="probe"):
        return None
    values = numeric(frame[1], rel, "#2", lines, out)
    with np.errstate(invalid="ignore"):
        outside = (values < 0) | (values > 1)
    for i in np.flatnonzero(outside):
        out.error(f"beta value {values[i]:g} is outside [0, 1]", file=rel, column="#2",
                  row=lines[i], kind="out-of-range values")
    return names, values


def read_matrix(directory: Path, spec: TableSpec, out: Findings) -> Matrix | None:
    return per_sample.read(directory, spec, read_sample, out, "beta")


files_read = per_sample.files_read
