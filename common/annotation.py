"""Genomic coordinates of feature names: gene symbols, miRNA names -> (chromosome, position).

The table (``common/annotations/genes_hg38.tsv``, GRCh38, built by
``common/annotations/build_gene_table.py``; provenance in its README) holds protein-coding,
lncRNA and miRNA genes. Names are recognised as:

* gene symbols, alone or as ``SYMBOL_EntrezID`` (``FOXA1_3169``);
* Ensembl gene ids, with or without their version (``ENSG00000129514.9``);
* miRNA names ``hsa-mir-21``, ``hsa_mir_628``, ``hsa-let-7b``, ``hsa-miR-21-5p`` -> the
  MIR gene (``MIR21``, ``MIR628``, ``MIRLET7B``); several copies (``MIR6859-1``) map to
  the first copy (``-1`` or ``1``) unless the name gives one.

Everything else (CpG probe ids, unknown symbols) is unknown: ``None``, so a model falls
back to a learned embedding for it.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

TABLE = Path(__file__).with_name("annotations") / "genes_hg38.tsv"
CHROMOSOMES = tuple(f"chr{c}" for c in [*range(1, 23), "X", "Y", "M"])
_MIRNA = re.compile(r"^(?:hsa[-_])?(mir|let)[-_]?([0-9a-z]+)(?:[-_]([0-9]+)(?![0-9a-z]))?",
                    re.IGNORECASE)
_ENTREZ_SUFFIX = re.compile(r"^(.+)_[0-9]+$")
_ENSEMBL = re.compile(r"^(ENSG[0-9]{11})(?:\.[0-9]+)?$", re.IGNORECASE)


@dataclass(frozen=True, order=True)
class Locus:
    """A position on GRCh38; orders by chromosome (1..22, X, Y, M), then position."""

    rank: int
    position: int
    chromosome: str


@lru_cache(maxsize=1)
def gene_table(path: Path = TABLE) -> dict[str, Locus]:
    """Upper-case gene name, and Ensembl gene id without version -> locus."""
    rank = {c: i for i, c in enumerate(CHROMOSOMES)}
    table: dict[str, Locus] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            locus = Locus(rank[row["chromosome"]], int(row["start"]), row["chromosome"])
            table[row["name"].upper()] = locus
            if row.get("ensembl_id"):
                table[row["ensembl_id"].upper()] = locus
    return table


def candidate_names(feature: str) -> list[str]:
    """Gene names ``feature`` may stand for, most specific first."""
    name = feature.strip()
    ensembl = _ENSEMBL.match(name)
    if ensembl:
        return [ensembl.group(1).upper()]
    mirna = _MIRNA.match(name)
    if mirna:
        kind, number, copy = mirna.groups()
        base = ("MIRLET" if kind.lower() == "let" else "MIR") + number.upper()
        # GENCODE numbers copies MIR6859-1, but lettered families MIR199A2, MIRLET7F1.
        joiner = "" if base[-1].isalpha() else "-"
        names = [f"{base}{joiner}{copy}"] if copy else []
        return [*names, base, f"{base}{joiner}1"]
    entrez = _ENTREZ_SUFFIX.match(name)
    return [name.upper(), entrez.group(1).upper()] if entrez else [name.upper()]


def locate(feature: str, table: dict[str, Locus] | None = None) -> Locus | None:
    """The locus of ``feature``, or None when it is not in the table."""
    genes = gene_table() if table is None else table
    for name in candidate_names(feature):
        if name in genes:
            return genes[name]
    return None


def annotate(features: Sequence[str]) -> list[Locus | None]:
    return [locate(f) for f in features]


def genome_order(features: Sequence[str]) -> list[int]:
    """Indices of ``features`` sorted by (chromosome, position); unknown ones last, in
    their given order."""
    loci = annotate(features)
    known = sorted((loc, i) for i, loc in enumerate(loci) if loc is not None)
    return [i for _, i in known] + [i for i, loc in enumerate(loci) if loc is None]
