"""Dataset directories: layout, manifests, loading and validation.

Modules: :mod:`~common.dataset.manifest` (manifest keys, parsing, the convention),
:mod:`~common.dataset.lookup` (which manifest a directory gets),
:mod:`~common.dataset.reading` (one CSV file), :mod:`~common.dataset.labels`,
:mod:`~common.dataset.assembly` (splits joined, schema checks),
:mod:`~common.dataset.loading` (inspect/load, the per-process cache),
:mod:`~common.dataset.fingerprints`, :mod:`~common.dataset.sites`,
:mod:`~common.dataset.findings` and :mod:`~common.dataset.multiomics` (the data record);
:mod:`~common.dataset.formats` (GDC, GEO, MAF, segment and AnnData/MuData readers),
:mod:`~common.dataset.qc` (per-modality QC and normalisation) and
:mod:`~common.dataset.harmonization` (gene ids, the consortium feature set, masks).

Dataset format
==============

A dataset directory holds one CSV file per modality and a labels file:

* ``<modality>.csv``: a header row, then one row per patient. The first column is the
  patient id, every other column is one feature (numeric). A row whose feature cells
  are all empty means the patient lacks that modality at this site.
* ``labels.csv``: ``patient_id,label``; a label is a class name (``Luminal A``) or an
  integer class index (``0``; ``0.0`` is accepted).

Without a manifest, every ``*.csv`` except ``labels.csv`` is a modality named by its file
stem, in alphabetical order. Other layouts are described by a manifest, looked up in
this order (:mod:`common.dataset.lookup`):

1. the path passed explicitly (``manifest=...``, ``--manifest FILE``);
2. ``dataset.toml`` in the directory;
3. a manifest shipped in ``common/manifests/``, only for a bundled set: the directory an
   alias names (``brca``, ``rosmap``; see :mod:`common.paths`), or a directory whose
   files are byte-identical to the bundled set's (the SHA-256 of every file the shipped
   manifest names equals its ``[fingerprint]`` table). Matching file names alone never
   select a shipped manifest;
4. a GDC sample sheet (``gdc_sample_sheet*.tsv``) in the directory: each supported Data
   Type is a modality (:mod:`common.dataset.formats.gdc_directory`);
5. the convention above.

The loaded data and the report record which one was used (``DatasetOrigin``:
``alias:<name>``, ``fingerprint:<name>``, ``dataset.toml``, ``--manifest <path>`` or
``convention``, plus the manifest's SHA-256).

File names in a manifest are relative to the dataset directory, wherever the manifest
itself lives.

Manifest keys (TOML)
--------------------
::

    [dataset]
    name = "brca"                      # required
    label_names = ["Luminal A", ...]   # optional: class order; integer label k means
                                       # label_names[k]; string labels must be among them
    site_pattern = "^TCGA-([A-Z0-9]{2})-"  # optional regex, one group = site code taken
                                       # from the patient id; "" = ids carry no site.
                                       # Default: TCGA_SITE_PATTERN (tissue source site)

    [defaults]                         # optional reading options for every file
    header = true                      # first line holds column names
    index_column = 0                   # patient id column: name, 0-based position, or
                                       # false = no id column (ids are generated from the
                                       # split name and 1-based row: "train-0001",
                                       # "row-0001" without splits; rows are then matched
                                       # by position across the files of a split)
    delimiter = ","

    [labels]                           # reading options above, plus:
    file = "labels.csv"                # default "labels.csv" (with splits: per split)
    column = "label"                   # name or 0-based position; default: "label", or
                                       # the only column besides the id column

    [modalities]                       # declared order = modality order of the schema;
                                       # without [modalities] and [splits], the modalities
                                       # follow the convention (all other *.csv files)
    mrna = "rna.csv"                   # short form: just the file
    [modalities.methylation]           # long form: reading options, plus
    file = "methylation.csv"
    feature_names_file = "2_featname.csv"  # one feature name per line, no header; required
                                       # for (and only allowed with) header = false

    [modalities.mrna2]                 # another file format (common.dataset.formats):
    file = "gdc_sample_sheet.tsv"      # csv (default), gdc-star-counts, gdc-mirna,
    format = "gdc-star-counts"         # methylation-beta, maf, seg, geo-series-matrix,
    value = "tpm_unstranded"           # h5ad, h5mu; each with its own keys (value,
    id_length = 12                     # gene_id, layer, modality, gene_coordinates, ...)
    qc = { log_transform = "log2p1", min_expression = 1, min_fraction = 0.2,
           missing = "error" }         # per-modality QC (common.dataset.qc), any format

    [splits.train]                     # optional; each split names its own files, and
    labels = "labels_tr.csv"           # inherits the options of [labels]/[modalities.*]
    modalities = { mrna = "1_tr.csv", methylation = { file = "2_tr.csv" } }

    [fairness]                         # optional; the run report's subgroup columns
    subgroups = ["age", "race"]        # clinical column, or prefix of one-hot race_*
    bins = { age = [50, 65] }          # optional bin edges of numeric columns

With ``[splits]``, ``[labels]`` and ``[modalities.<name>]`` carry only shared options (e.g.
the feature-name files) and every split must name a file for every modality. Loading
with ``split=None`` concatenates all splits. Unknown keys are errors, so typos do not
pass silently. The shipped ``common/manifests/rosmap.toml`` is a complete example of a
headerless layout with splits.
Shipped manifests also hold a ``[fingerprint]`` table (file name -> SHA-256 of the
bundled copy); other manifests cannot use it.

:func:`load_dataset` keeps its result for the life of the process and returns a copy
of it while no file it read has changed (:mod:`common.dataset.loading`).

Class names: ``label_names`` from the manifest if given (classes absent from a small
site still count); otherwise the sorted distinct string labels, or ``"0".."k"`` for
integer labels. Integer labels are never mapped onto a model's class names by guessing:
checking them against a model schema needs ``label_names`` (a ``dataset.toml`` holding
only ``[dataset] name`` and ``label_names`` is enough).

Validation
==========

:func:`inspect_dataset` never raises for problems in the data; it returns a
:class:`ValidationReport` whose findings name the file, column and row (1-based line
number in the file, the header being line 1). Errors: missing labels file, unreadable or
empty CSV, duplicate patient ids, duplicate or empty column names, patients in a modality
file but not in the labels, non-numeric / missing (NaN, empty) / infinite values inside a
row, a feature column with no value at all, a file with no patients, labels that cannot
be parsed or are unknown, a patient without any modality, and (with a model schema)
feature or label names that differ from the schema. Warnings: labelled patients missing
from a modality file or whose row is entirely empty (they lack that modality; masked),
a modality file that is absent, a modality the model knows but the directory lacks, and
constant feature columns. A constant column is only a warning because a small hospital
can legitimately have one (e.g. a one-hot clinical column where every local patient has
the same histology). Repeated findings of one kind in one file are capped at
``MAX_REPEATS``, followed by a "... and N more" finding.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Public name -> defining module. Imported on first use, so that importing the light
# data record (common.dataset.multiomics) does not pull in pandas and the CSV readers.
_EXPORTS = {
    "SETTLE_NS": "files",
    "dataset_fingerprint": "fingerprints",
    "MAX_REPEATS": "findings",
    "DatasetError": "findings",
    "Finding": "findings",
    "ValidationReport": "findings",
    "clear_caches": "loading",
    "inspect_dataset": "loading",
    "load_dataset": "loading",
    "SHIPPED_MANIFESTS": "lookup",
    "read_manifest": "lookup",
    "shipped_manifests": "lookup",
    "LABELS_FILE": "manifest",
    "MANIFEST_NAME": "manifest",
    "TCGA_SITE_PATTERN": "manifest",
    "Manifest": "manifest",
    "SplitLayout": "manifest",
    "TableSpec": "manifest",
    "DatasetOrigin": "multiomics",
    "MultiOmicsData": "multiomics",
    "site_codes": "sites",
}

__all__ = [
    "LABELS_FILE",
    "MANIFEST_NAME",
    "MAX_REPEATS",
    "SETTLE_NS",
    "SHIPPED_MANIFESTS",
    "TCGA_SITE_PATTERN",
    "DatasetError",
    "DatasetOrigin",
    "Finding",
    "Manifest",
    "MultiOmicsData",
    "SplitLayout",
    "TableSpec",
    "ValidationReport",
    "clear_caches",
    "dataset_fingerprint",
    "inspect_dataset",
    "load_dataset",
    "read_manifest",
    "shipped_manifests",
    "site_codes",
]

if TYPE_CHECKING:
    from common.dataset.files import SETTLE_NS
    from common.dataset.findings import MAX_REPEATS, DatasetError, Finding, ValidationReport
    from common.dataset.fingerprints import dataset_fingerprint
    from common.dataset.loading import clear_caches, inspect_dataset, load_dataset
    from common.dataset.lookup import SHIPPED_MANIFESTS, read_manifest, shipped_manifests
    from common.dataset.manifest import (
        LABELS_FILE,
        MANIFEST_NAME,
        TCGA_SITE_PATTERN,
        Manifest,
        SplitLayout,
        TableSpec,
    )
    from common.dataset.multiomics import DatasetOrigin, MultiOmicsData
    from common.dataset.sites import site_codes


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
