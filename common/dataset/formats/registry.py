"""The file formats a modality can be read from, and the manifest keys each accepts.

Pure data (no readers imported), so manifest parsing can validate a modality's keys
without loading pandas or anndata. The reader of format ``NAME`` is the module
``common.dataset.formats.<MODULES[NAME]>``, whose ``read_matrix`` returns a
:class:`~common.dataset.formats.matrix.Matrix`.
"""

from __future__ import annotations

from typing import Any

CSV = "csv"

# format name -> reader module
MODULES = {
    "gdc-star-counts": "gdc_star",
    "gdc-mirna": "gdc_mirna",
    "methylation-beta": "methylation_beta",
    "maf": "maf",
    "seg": "seg",
    "geo-series-matrix": "geo",
    "h5ad": "anndata_h5",
    "h5mu": "anndata_h5",
}
FORMATS = (CSV, *MODULES)

STAR_VALUES = ("unstranded", "tpm_unstranded", "fpkm_uq_unstranded")
MIRNA_VALUES = ("reads_per_million_miRNA_mapped", "read_count")
STAR_GENE_IDS = ("gene_id", "gene_name")

# GDC "Data Type" of the files a per-sample format reads from a sample sheet.
GDC_DATA_TYPES = {
    "gdc-star-counts": "Gene Expression Quantification",
    "gdc-mirna": "miRNA Expression Quantification",
    "methylation-beta": "Methylation Beta Value",
    "maf": "Masked Somatic Mutation",
    "seg": "Copy Number Segment",
}

# Keys every non-CSV format accepts: GDC sample-sheet selection and id trimming.
_COMMON = ("data_type", "id_length")

# format -> {option: (allowed values or type, default)}
OPTIONS: dict[str, dict[str, Any]] = {
    "gdc-star-counts": {"value": STAR_VALUES, "gene_id": STAR_GENE_IDS},
    "gdc-mirna": {"value": MIRNA_VALUES},
    "methylation-beta": {},
    "maf": {"variant_classes": list, "genes_file": str},
    "seg": {"gene_coordinates": str, "value": str},
    "geo-series-matrix": {"sample_id": str},
    "h5ad": {"layer": str},
    "h5mu": {"layer": str, "modality": str},
}
DEFAULTS: dict[str, dict[str, Any]] = {
    "gdc-star-counts": {"value": "unstranded", "gene_id": "gene_id"},
    "gdc-mirna": {"value": "reads_per_million_miRNA_mapped"},
    "geo-series-matrix": {"sample_id": "!Sample_geo_accession"},
}
REQUIRED = {"seg": ("gene_coordinates",), "h5mu": ("modality",)}


def option_keys(fmt: str) -> tuple[str, ...]:
    """Format-specific manifest keys of ``fmt`` (empty for CSV)."""
    if fmt == CSV:
        return ()
    return (*_COMMON, *OPTIONS[fmt])


def check_options(fmt: str, opts: dict[str, Any], where: str) -> dict[str, Any]:
    """Validate the format keys in ``opts``; return them with defaults filled in.

    Raises ValueError naming the key.
    """
    if fmt not in FORMATS:
        raise ValueError(f"{where}: unknown format {fmt!r}; known: {list(FORMATS)}")
    allowed = OPTIONS.get(fmt, {})
    out = dict(DEFAULTS.get(fmt, {}))
    for key, value in opts.items():
        if key == "data_type":
            ok = isinstance(value, str) and bool(value)
        elif key == "id_length":
            ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
        else:
            rule = allowed[key]
            if isinstance(rule, tuple):
                ok = value in rule
            elif rule is list:
                ok = isinstance(value, list) and all(isinstance(x, str) and x for x in value)
            else:
                ok = isinstance(value, rule) and bool(value)
        if not ok:
            rule = allowed.get(key)
            hint = f"one of {list(rule)}" if isinstance(rule, tuple) else "see the format's docs"
            if key == "id_length":
                hint = "a positive integer"
            raise ValueError(f"{where}: bad value {value!r} for {key} ({hint})")
        out[key] = value
    for key in REQUIRED.get(fmt, ()):
        if key not in out:
            raise ValueError(f"{where}: format {fmt!r} needs {key}")
    return out
