"""A directory of GDC downloads with its sample sheet, read without a manifest.

Each supported ``Data Type`` of the sheet becomes a modality (names in
:data:`MODALITY_OF`); labels come from ``labels.csv``. Copy-number segments need gene
coordinates, so they are read only through a manifest (``format = "seg"``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from common.dataset.formats.registry import GDC_DATA_TYPES
from common.dataset.formats.sample_sheet import data_types, sheets
from common.dataset.manifest import TCGA_SITE_PATTERN, Manifest, parse_manifest

logger = logging.getLogger(__name__)

# GDC Data Type -> (modality name, format)
MODALITY_OF = {
    GDC_DATA_TYPES["gdc-star-counts"]: ("mrna", "gdc-star-counts"),
    GDC_DATA_TYPES["gdc-mirna"]: ("mirna", "gdc-mirna"),
    GDC_DATA_TYPES["methylation-beta"]: ("methylation", "methylation-beta"),
    GDC_DATA_TYPES["maf"]: ("mutation", "maf"),
}
CHOSEN_BY = "gdc-sample-sheet"


def gdc_manifest(directory: Path) -> Manifest | None:
    """The layout of a GDC download directory, or None when it has no usable sheet."""
    modalities: dict[str, dict] = {}
    used: list[str] = []
    for sheet in sheets(directory):
        for dt in data_types(directory, sheet):
            if dt not in MODALITY_OF:
                logger.info("%s: Data Type %r is not read without a manifest", sheet, dt)
                continue
            name, fmt = MODALITY_OF[dt]
            if name not in modalities:
                modalities[name] = {"file": sheet, "format": fmt}
                used.append(sheet)
    if not modalities:
        return None
    doc = {
        "dataset": {"name": directory.name, "site_pattern": TCGA_SITE_PATTERN},
        "modalities": modalities,
    }
    source = directory / used[0]
    man = parse_manifest(doc, source, directory)
    return Manifest(
        name=man.name,
        label_names=None,
        site_pattern=man.site_pattern,
        splits=(),
        source=source,
        modality_names=man.modality_names,
        layouts=man.layouts,
        chosen_by=f"{CHOSEN_BY}:{used[0]}",
        sha256=None,
    )
