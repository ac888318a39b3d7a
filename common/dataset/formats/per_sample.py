"""Formats with one file per sample (STAR counts, miRNA, methylation betas), read
through the GDC sample sheet named as the modality's ``file``."""

from __future__ import annotations

from pathlib import Path

from common.dataset.findings import Findings
from common.dataset.formats.matrix import Matrix
from common.dataset.formats.registry import GDC_DATA_TYPES
from common.dataset.formats.sample_sheet import (
    SHEET_COLUMNS,
    SampleReader,
    is_sample_sheet,
    read_per_sample,
)
from common.dataset.formats.sample_sheet import files_read as sheet_files
from common.dataset.manifest import TableSpec


def data_type(spec: TableSpec) -> str:
    return spec.option("data_type") or GDC_DATA_TYPES[spec.format]


def read(directory: Path, spec: TableSpec, read_one: SampleReader, out: Findings,
         value_name: str | None = None) -> Matrix | None:
    """Every sample file of ``spec``'s data type listed in its sample sheet."""
    if not is_sample_sheet(directory / spec.file):
        out.error(
            f"format {spec.format!r} reads one file per sample through a GDC sample sheet "
            f"(a TSV with columns {list(SHEET_COLUMNS)}); this file is not one",
            file=spec.file, row=1,
        )
        return None
    return read_per_sample(directory, spec.file, data_type(spec), read_one, out, value_name)


def files_read(directory: Path, spec: TableSpec) -> list[str]:
    if not is_sample_sheet(directory / spec.file):
        return []
    return sheet_files(directory, spec.file, data_type(spec))
