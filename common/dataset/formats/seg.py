"""Copy-number segments to gene-level values, given gene coordinates.

A segment file is tab-separated with a header: the sample (``GDC_Aliquot``, ``ID`` or
``Sample``), ``Chromosome`` (or ``chrom``), ``Start``/``End`` (or ``loc.start``/
``loc.end``, 1-based inclusive) and the value (``value``; default ``Segment_Mean``, else
``seg.mean``). The modality's ``file`` is one segment file holding many samples, or a
GDC sample sheet listing one file per sample (ids: the sheet's ``Sample ID``).

``gene_coordinates`` names a TSV with the header ``gene chromosome start end``. A gene's
value is the mean of the segments overlapping it, weighted by overlap length; a gene
no segment covers is a missing value (see the modality's ``qc.missing``).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from common.dataset.findings import Findings, preview
from common.dataset.formats.matrix import Matrix, numeric, read_tsv, texts, unique_names
from common.dataset.formats.registry import GDC_DATA_TYPES
from common.dataset.formats.sample_sheet import entries, is_sample_sheet
from common.dataset.manifest import TableSpec

SAMPLE_COLUMNS = ("GDC_Aliquot", "ID", "Sample", "sample")
ALIASES = {"Chromosome": ("Chromosome", "chrom", "chromosome"),
           "Start": ("Start", "loc.start", "start"),
           "End": ("End", "loc.end", "end")}
VALUE_COLUMNS = ("Segment_Mean", "seg.mean")
GENE_COLUMNS = ("gene", "chromosome", "start", "end")



def _column(frame: pd.DataFrame, names: tuple[str, ...]) -> str | None:
    return next((c for c in names if c in frame.columns), None)


def _chrom(cells: pd.Series) -> pd.Series:
    """``chr1`` and ``1`` name the same chromosome."""
    return pd.Series([re.sub(r"^chr", "", c, flags=re.IGNORECASE) for c in texts(cells)],
                     index=cells.index, dtype=object)


def _segments(path: Path, rel: str, value: str | None, with_sample: bool, out: Findings
              ) -> pd.DataFrame | None:
    """Columns sample, chrom, start, end, value, line (sample "" without ``with_sample``)."""
    read = read_tsv(path, rel, out)
    if read is None:
        return None
    frame, first = read
    wanted = {k: " or ".join(v) for k, v in ALIASES.items()}
    cols = {k: _column(frame, v) for k, v in ALIASES.items()}
    wanted["value"] = value or " or ".join(VALUE_COLUMNS)
    cols["value"] = value if value in frame.columns else (
        None if value else _column(frame, VALUE_COLUMNS))
    sample = None
    if with_sample:
        wanted["sample"] = " or ".join(SAMPLE_COLUMNS)
        cols["sample"] = sample = _column(frame, SAMPLE_COLUMNS)
    lacking = [wanted[k] for k, c in cols.items() if c is None]
    if lacking:
        out.error(f"missing column(s) {lacking}; the header has {preview(list(frame.columns))}",
                  file=rel, row=first - 1)
        return None
    lines = np.arange(len(frame)) + first
    seg = pd.DataFrame({
        "sample": texts(frame[sample]) if sample else "",
        "chrom": _chrom(frame[cols["Chromosome"]]),
        "start": numeric(frame[cols["Start"]], rel, cols["Start"], lines, out),
        "end": numeric(frame[cols["End"]], rel, cols["End"], lines, out),
        "value": numeric(frame[cols["value"]], rel, cols["value"], lines, out),
        "line": lines,
    })
    bad = (seg["end"] < seg["start"]).to_numpy()
    for i in np.flatnonzero(bad):
        out.error("segment ends before it starts", file=rel, column=cols["End"],
                  row=lines[i], kind="bad segments")
    return seg


def _genes(directory: Path, rel: str, out: Findings) -> pd.DataFrame | None:
    read = read_tsv(directory / rel, rel, out, columns=GENE_COLUMNS)
    if read is None:
        return None
    frame, first = read
    lines = np.arange(len(frame)) + first
    names = texts(frame["gene"])
    if not unique_names(names, rel, "gene", lines, out, what="gene"):
        return None
    return pd.DataFrame({
        "gene": names,
        "chrom": _chrom(frame["chromosome"]),
        "start": numeric(frame["start"], rel, "start", lines, out),
        "end": numeric(frame["end"], rel, "end", lines, out),
    })


def gene_values(seg: pd.DataFrame, genes: pd.DataFrame) -> np.ndarray:
    """Overlap-weighted mean segment value per gene (NaN where nothing overlaps)."""
    total = np.zeros(len(genes))
    weight = np.zeros(len(genes))
    for chrom, part in seg.groupby("chrom", sort=False):
        on = np.flatnonzero((genes["chrom"] == chrom).to_numpy())
        if not len(on):
            continue
        gs, ge = genes["start"].to_numpy()[on], genes["end"].to_numpy()[on]
        ss, se = part["start"].to_numpy(), part["end"].to_numpy()
        overlap = np.minimum(ge[None, :], se[:, None]) - np.maximum(gs[None, :], ss[:, None]) + 1
        overlap = np.clip(overlap, 0, None)
        total[on] += (overlap * part["value"].to_numpy()[:, None]).sum(axis=0)
        weight[on] += overlap.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(weight > 0, total / weight, np.nan)


def read_matrix(directory: Path, spec: TableSpec, out: Findings) -> Matrix | None:
    errors_before = out.n_errors
    genes = _genes(directory, spec.option("gene_coordinates"), out)
    value = spec.option("value")
    per_sample: list[tuple[str, int, pd.DataFrame]] = []
    if is_sample_sheet(directory / spec.file):
        data_type = spec.option("data_type") or GDC_DATA_TYPES["seg"]
        for e in entries(directory, spec.file, data_type, out) or []:
            seg = _segments(directory / e.rel, e.rel, value, False, out)
            if seg is not None:
                per_sample.append((e.sample_id, e.line, seg))
    else:
        seg = _segments(directory / spec.file, spec.file, value, True, out)
        if seg is not None:
            for sample, part in seg.groupby("sample", sort=False):
                per_sample.append((str(sample), int(part["line"].iloc[0]), part))
    if out.n_errors > errors_before or genes is None:
        return None
    if not per_sample:
        out.error("no segment in the file(s)", file=spec.file)
        return None
    values = np.stack([gene_values(part, genes) for _, _, part in per_sample])
    ids = [s for s, _, _ in per_sample]
    lines = np.array([line for _, line, _ in per_sample], dtype=np.int64)
    if not unique_names(ids, spec.file, "Sample ID", lines, out, what="sample"):
        return None
    return Matrix(spec.file, ids, lines, genes["gene"].tolist(), values,
                  value or "segment mean")


def files_read(directory: Path, spec: TableSpec) -> list[str]:
    extra = [spec.option("gene_coordinates")]
    if not is_sample_sheet(directory / spec.file):
        return extra
    data_type = spec.option("data_type") or GDC_DATA_TYPES["seg"]
    return [e.rel for e in entries(directory, spec.file, data_type, Findings()) or []] + extra
