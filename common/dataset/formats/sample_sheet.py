"""The GDC sample sheet: which downloaded file belongs to which sample.

GDC's portal writes ``gdc_sample_sheet.<date>.tsv`` beside a download, tab-separated,
with (among others) the columns ``File ID``, ``File Name``, ``Data Type`` and
``Sample ID``. A download keeps each file in a folder named by its File ID
(``<File ID>/<File Name>``); flat copies are found too.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.dataset.findings import Findings
from common.dataset.formats.matrix import Matrix, read_tsv, require_columns, stack_samples

SHEET_GLOB = "gdc_sample_sheet*.tsv"
SHEET_COLUMNS = ("File Name", "Sample ID", "Data Type")


@dataclass(frozen=True)
class SheetEntry:
    """One file of the sheet: its location, its sample and its line in the sheet."""

    rel: str  # path relative to the dataset directory ("" when not found)
    file_name: str
    sample_id: str
    line: int


def sheets(directory: Path) -> list[str]:
    """GDC sample sheets in ``directory`` (file names, sorted)."""
    return sorted(p.name for p in directory.glob(SHEET_GLOB) if p.is_file())


def is_sample_sheet(path: Path) -> bool:
    """True when the first line of ``path`` holds the sample sheet's columns."""
    try:
        with path.open(encoding="utf-8-sig") as fh:
            header = fh.readline().rstrip("\r\n").split("\t")
    except (OSError, UnicodeDecodeError):
        return False
    return all(c in header for c in SHEET_COLUMNS)


def data_types(directory: Path, rel: str) -> list[str]:
    """The distinct Data Types a sheet lists, in order of first appearance."""
    read = read_tsv(directory / rel, rel, Findings())
    if read is None or "Data Type" not in read[0].columns:
        return []
    return list(dict.fromkeys(t.strip() for t in read[0]["Data Type"] if t.strip()))


def entries(directory: Path, rel: str, data_type: str, out: Findings) -> list[SheetEntry] | None:
    """The sheet's files of ``data_type``, located; missing files are errors."""
    read = read_tsv(directory / rel, rel, out)
    if read is None:
        return None
    frame, first = read
    if not require_columns(frame, SHEET_COLUMNS, rel, first - 1, out):
        return None
    frame = frame.fillna("")
    found: dict[str, list[str]] | None = None
    result = []
    for i, row in enumerate(frame.itertuples(index=False)):
        rec = dict(zip(frame.columns, row, strict=True))
        if rec["Data Type"].strip() != data_type:
            continue
        line = first + i
        name = rec["File Name"].strip()
        sample = rec["Sample ID"].split(",")[0].strip()
        if not name or not sample:
            col = "File Name" if not name else "Sample ID"
            out.error("empty cell", file=rel, column=col, row=line, kind="empty cells")
            continue
        candidates = [name]
        if rec.get("File ID", "").strip():
            candidates.insert(0, f"{rec['File ID'].strip()}/{name}")
        where = next((c for c in candidates if (directory / c).is_file()), None)
        if where is None:
            if found is None:
                found = _index(directory)
            hits = found.get(name, [])
            if len(hits) == 1:
                where = hits[0]
            else:
                why = "not found" if not hits else f"found {len(hits)} times: {hits[:3]}"
                out.error(f"file {name!r} of sample {sample!r} {why} under {directory}",
                          file=rel, column="File Name", row=line, kind="missing files")
                continue
        result.append(SheetEntry(where, name, sample, line))
    if not result and not frame.empty and not any(
        t.strip() == data_type for t in frame["Data Type"]
    ):
        out.error(f"the sheet lists no file of Data Type {data_type!r}", file=rel,
                  column="Data Type")
    return result


def _index(directory: Path) -> dict[str, list[str]]:
    """File name -> relative paths of every file under ``directory``."""
    index: dict[str, list[str]] = {}
    for root, _, names in os.walk(directory):
        for nm in names:
            rel = (Path(root) / nm).relative_to(directory).as_posix()
            index.setdefault(nm, []).append(rel)
    return index


SampleReader = Callable[[Path, str, Findings], tuple[list[str], np.ndarray] | None]


def read_per_sample(directory: Path, rel: str, data_type: str, read_one: SampleReader,
                    out: Findings, value_name: str | None = None) -> Matrix | None:
    """Read every file of ``data_type`` the sheet lists into one matrix (one row each)."""
    errors_before = out.n_errors
    listed = entries(directory, rel, data_type, out)
    if listed is None:
        return None
    samples = []
    for e in listed:
        got = read_one(directory / e.rel, e.rel, out)
        if got is not None:
            samples.append((e.sample_id, e.line, e.rel, got[0], got[1]))
    if out.n_errors > errors_before:
        return None
    return stack_samples(rel, samples, out, value_name)


def files_read(directory: Path, rel: str, data_type: str) -> list[str]:
    """The files :func:`read_per_sample` reads (for fingerprints and cache stamps)."""
    listed = entries(directory, rel, data_type, Findings()) or []
    return [e.rel for e in listed]
