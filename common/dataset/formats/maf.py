"""MAF somatic mutations to gene-level mutation indicators per sample.

A MAF is tab-separated, ``#`` comment lines first (``#version 2.4``), then a header
with at least ``Hugo_Symbol``, ``Variant_Classification`` and ``Tumor_Sample_Barcode``.
A sample's value for a gene is 1 when the MAF has a mutation of one of
``variant_classes`` (default: the non-silent classes below) in that gene, else 0.

The modality's ``file`` is one MAF (ids: ``Tumor_Sample_Barcode``) or a GDC sample
sheet listing per-aliquot MAFs (ids: the sheet's first ``Sample ID``). A sample that no
MAF lists is not known to be unmutated: it lacks the modality (masked). Features are the
genes of ``genes_file`` (one symbol per line: the site's panel, so that every site
declares the same genes) or else every gene mutated in some sample here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.dataset.findings import Findings
from common.dataset.formats.matrix import Matrix, read_tsv, unique_names
from common.dataset.formats.registry import GDC_DATA_TYPES
from common.dataset.formats.sample_sheet import entries, is_sample_sheet
from common.dataset.manifest import TableSpec

NON_SILENT = (
    "Missense_Mutation", "Nonsense_Mutation", "Frame_Shift_Del", "Frame_Shift_Ins",
    "In_Frame_Del", "In_Frame_Ins", "Splice_Site", "Translation_Start_Site",
    "Nonstop_Mutation",
)
COLUMNS = ("Hugo_Symbol", "Variant_Classification", "Tumor_Sample_Barcode")


def _read_maf(path: Path, rel: str, classes: set[str], out: Findings
              ) -> dict[str, tuple[int, set[str]]] | None:
    """Sample -> (first line, mutated genes) of one MAF."""
    read = read_tsv(path, rel, out, columns=COLUMNS)
    if read is None:
        return None
    frame, first = read
    samples: dict[str, tuple[int, set[str]]] = {}
    for i, (gene, vclass, sample) in enumerate(frame[list(COLUMNS)].itertuples(index=False)):
        line = first + i
        gene, vclass, sample = gene.strip(), vclass.strip(), sample.strip()
        if not sample:
            out.error("empty sample barcode", file=rel, column="Tumor_Sample_Barcode",
                      row=line, kind="empty cells")
            continue
        entry = samples.setdefault(sample, (line, set()))
        if vclass in classes:
            if not gene or gene == "Unknown":
                out.warning("mutation without a gene symbol is ignored", file=rel,
                            column="Hugo_Symbol", row=line, kind="unknown genes")
                continue
            entry[1].add(gene)
    return samples


def _genes(directory: Path, rel: str, out: Findings) -> list[str] | None:
    try:
        names = [g.strip() for g in (directory / rel).read_text("utf-8-sig").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        out.error(f"cannot read the genes file: {e}", file=rel)
        return None
    names = [g for g in names if g]
    lines = np.arange(1, len(names) + 1)
    return names if unique_names(names, rel, None, lines, out, what="gene") else None


def read_matrix(directory: Path, spec: TableSpec, out: Findings) -> Matrix | None:
    classes = set(spec.option("variant_classes") or NON_SILENT)
    errors_before = out.n_errors
    rows: list[tuple[str, int, set[str]]] = []  # (id, line in spec.file, genes)
    if is_sample_sheet(directory / spec.file):
        data_type = spec.option("data_type") or GDC_DATA_TYPES["maf"]
        for e in entries(directory, spec.file, data_type, out) or []:
            got = _read_maf(directory / e.rel, e.rel, classes, out)
            if got is not None:
                rows.append((e.sample_id, e.line, set().union(*(g for _, g in got.values()))))
    else:
        got = _read_maf(directory / spec.file, spec.file, classes, out)
        rows = [(s, line, g) for s, (line, g) in (got or {}).items()]
    genes = None
    if spec.option("genes_file"):
        genes = _genes(directory, spec.option("genes_file"), out)
    if out.n_errors > errors_before:
        return None
    if not rows:
        out.error("no sample in the mutation file(s)", file=spec.file)
        return None
    if genes is None:
        genes = sorted(set().union(*(g for _, _, g in rows)))
    pos = {g: j for j, g in enumerate(genes)}
    values = np.zeros((len(rows), len(genes)))
    for i, (_, _, mutated) in enumerate(rows):
        values[i, [pos[g] for g in mutated if g in pos]] = 1.0
    ids = [r[0] for r in rows]
    lines = np.array([r[1] for r in rows], dtype=np.int64)
    if not unique_names(ids, spec.file, "Sample ID", lines, out, what="sample"):
        return None
    return Matrix(spec.file, ids, lines, genes, values, "mutated")


def files_read(directory: Path, spec: TableSpec) -> list[str]:
    extra = [spec.option("genes_file")] if spec.option("genes_file") else []
    if not is_sample_sheet(directory / spec.file):
        return extra
    data_type = spec.option("data_type") or GDC_DATA_TYPES["maf"]
    return [e.rel for e in entries(directory, spec.file, data_type, Findings()) or []] + extra
