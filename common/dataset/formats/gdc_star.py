"""GDC STAR gene counts (``*.rna_seq.augmented_star_gene_counts.tsv``), one per sample.

Layout: a ``# gene-model: GENCODE v36`` comment line, a header ``gene_id gene_name
gene_type unstranded stranded_first stranded_second tpm_unstranded fpkm_unstranded
fpkm_uq_unstranded``, four summary rows (``N_unmapped``, ``N_multimapping``,
``N_noFeature``, ``N_ambiguous``; skipped), then one row per gene. Manifest keys:
``value`` (``unstranded`` counts, ``tpm_unstranded`` or ``fpkm_uq_unstranded``) and
``gene_id`` (``gene_id``: versioned Ensembl ids, the default; ``gene_name``: symbols,
where GENCODE repeats a name the rows are summed).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from common.dataset.findings import Findings
from common.dataset.formats import per_sample
from common.dataset.formats.matrix import Matrix, numeric, read_tsv, texts, unique_names
from common.dataset.manifest import TableSpec

SUMMARY_PREFIX = "N_"


def read_sample(path: Path, rel: str, out: Findings, *, value: str,
                gene_id: str) -> tuple[list[str], np.ndarray] | None:
    """One STAR file: gene names and the chosen value column."""
    read = read_tsv(path, rel, out, columns=tuple(dict.fromkeys(("gene_id", gene_id, value))))
    if read is None:
        return None
    frame, first = read
    lines = np.arange(len(frame)) + first
    genes = texts(frame["gene_id"])
    keep = np.array([bool(g) and not g.startswith(SUMMARY_PREFIX) for g in genes], dtype=bool)
    frame, lines = frame.loc[keep].reset_index(drop=True), lines[keep]
    values = numeric(frame[value], rel, value, lines, out)
    names = texts(frame[gene_id])
    if gene_id == "gene_name":
        summed = pd.Series(values).groupby(pd.Series(names), sort=False).sum(min_count=1)
        return summed.index.tolist(), summed.to_numpy(dtype=np.float64)
    if not unique_names(names, rel, gene_id, lines, out, what="gene"):
        return None
    return names, values


def read_matrix(directory: Path, spec: TableSpec, out: Findings) -> Matrix | None:
    value, gene_id = spec.option("value"), spec.option("gene_id")
    reader = partial(read_sample, value=value, gene_id=gene_id)
    return per_sample.read(directory, spec, reader, out, value)


files_read = per_sample.files_read
