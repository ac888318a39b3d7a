"""GDC miRNA quantification (``*.mirbase21.mirnas.quantification.txt``), one per sample.

Tab-separated with the header ``miRNA_ID read_count reads_per_million_miRNA_mapped
cross-mapped``; one row per miRNA (``hsa-let-7a-1``). Manifest key ``value``:
``reads_per_million_miRNA_mapped`` (default) or ``read_count``.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from common.dataset.findings import Findings
from common.dataset.formats import per_sample
from common.dataset.formats.matrix import Matrix, numeric, read_tsv, texts, unique_names
from common.dataset.manifest import TableSpec

ID_COLUMN = "miRNA_ID"


def read_sample(path: Path, rel: str, out: Findings, *,
                value: str) -> tuple[list[str], np.ndarray] | None:
    read = read_tsv(path, rel, out, columns=(ID_COLUMN, value))
    if read is None:
        return None
    frame, first = read
    lines = np.arange(len(frame)) + first
    names = texts(frame[ID_COLUMN])
    if not unique_names(names, rel, ID_COLUMN, lines, out, what="miRNA"):
        return None
    return names, numeric(frame[value], rel, value, lines, out)


def read_matrix(directory: Path, spec: TableSpec, out: Findings) -> Matrix | None:
    value = spec.option("value")
    return per_sample.read(directory, spec, partial(read_sample, value=value), out, value)


files_read = per_sample.files_read
