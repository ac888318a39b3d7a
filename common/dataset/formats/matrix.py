"""What every format reader returns, and the parsing helpers readers share.

Line numbers in findings are 1-based lines of the file named, comment and header lines
included, so a site's IT can open the file at the reported line.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from common.dataset.findings import Findings, preview

# Cell texts that mean "no value" in the formats read here (GEO writes null, GDC NA).
MISSING_TEXTS = frozenset({"", "NA", "NaN", "nan", "null", "NULL", "N/A"})


@dataclass
class Matrix:
    """One modality as read: patients x features, NaN where a value is missing.

    ``file`` is the file that row findings name (the data file, or the GDC sample sheet
    for per-sample files) and ``lines[i]`` the line of patient ``i`` in it.
    """

    file: str
    ids: list[str]
    lines: np.ndarray
    features: list[str]
    values: np.ndarray  # float64 [n, F]
    value_name: str | None = None  # the quantity read (e.g. tpm_unstranded)


def read_tsv(path: Path, rel: str, out: Findings, *, header: bool = True,
             columns: tuple[str, ...] | None = None) -> tuple[pd.DataFrame, int] | None:
    """A tab-separated file as text cells (object dtype), leading ``#`` lines skipped.

    With ``columns`` only those are read (all must be in the header, else an error
    naming the header line). Returns the frame and the 1-based line of its first data row.
    """
    try:
        skip, names = 0, None
        with open_text(path) as fh:
            for line in fh:
                if not line.startswith("#"):
                    if header:
                        names = [c.strip() for c in line.rstrip("\r\n").split("\t")]
                    break
                skip += 1
        if header and names is None:
            out.error("the file has no header line", file=rel)
            return None
        usecols = None
        if columns is not None and names is not None:
            missing = [c for c in columns if c not in names]
            if missing:
                out.error(f"missing column(s) {missing}; the header has {preview(names)}",
                          file=rel, row=skip + 1)
                return None
            usecols = [names.index(c) for c in columns]
        frame = pd.read_csv(
            path, sep="\t", header=None, skiprows=skip + (1 if header else 0), dtype=object,
            keep_default_na=False, na_filter=False, skip_blank_lines=False,
            encoding="utf-8-sig", quoting=3, usecols=usecols,
        )
    except pd.errors.EmptyDataError:
        if header and names is not None:
            return pd.DataFrame(columns=list(columns or names), dtype=object), skip + 2
        out.error("the file has no data", file=rel)
        return None
    except pd.errors.ParserError as e:
        out.error(f"cannot parse the file: {str(e).split('C error: ')[-1].strip()}", file=rel)
        return None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        out.error(f"cannot read the file: {e}", file=rel)
        return None
    if names is not None:
        labels = [names[k] for k in usecols] if usecols is not None else names
        if len(labels) != frame.shape[1]:
            out.error(f"rows have {frame.shape[1]} cells, the header {len(labels)}",
                      file=rel, row=skip + 1)
            return None
        frame.columns = labels
    return frame, skip + (2 if header else 1)


def texts(cells: pd.Series) -> list[str]:
    """Cells as stripped strings (plain Python: faster than pandas' string methods)."""
    return [str(c).strip() for c in cells.to_numpy(dtype=object)]


def open_text(path: Path):
    if path.suffix == ".gz":
        import gzip

        return gzip.open(path, "rt", encoding="utf-8-sig")
    return path.open(encoding="utf-8-sig")


def require_columns(frame: pd.DataFrame, names: tuple[str, ...], rel: str, line: int,
                    out: Findings) -> bool:
    """True when ``frame`` has every column of ``names``; else one error naming them."""
    missing = [c for c in names if c not in frame.columns]
    if missing:
        out.error(
            f"missing column(s) {missing}; the header has {preview(list(frame.columns))}",
            file=rel, row=line,
        )
        return False
    return True


def numeric(cells: pd.Series, rel: str, column: str, lines: np.ndarray,
            out: Findings) -> np.ndarray:
    """Text cells as float64; missing texts become NaN, other non-numbers are errors."""
    raw = cells.to_numpy(dtype=object)
    values = np.asarray(pd.to_numeric(raw, errors="coerce"), dtype=np.float64)
    # Only cells the fast parser rejected are looked at one by one.
    for i in np.flatnonzero(np.isnan(values)):
        text = str(raw[i]).strip()
        if text in MISSING_TEXTS:
            continue
        try:
            values[i] = float(text)
        except ValueError:
            out.error(f"non-numeric value {text!r}", file=rel, column=column,
                      row=lines[i], kind="non-numeric values")
    return values


def unique_names(names: list[str], rel: str, column: str, lines: np.ndarray,
                 out: Findings, what: str = "feature") -> bool:
    """False (with errors naming the rows) when ``names`` has empty or repeated entries."""
    if "" not in names and len(set(names)) == len(names):
        return True
    ok = True
    seen: dict[str, int] = {}
    for i, nm in enumerate(names):
        if not nm:
            out.error(f"empty {what} name", file=rel, column=column, row=lines[i],
                      kind=f"empty {what} names")
            ok = False
        elif nm in seen:
            out.error(f"duplicate {what} {nm!r} (first at row {seen[nm]})", file=rel,
                      column=column, row=lines[i], kind=f"duplicate {what}s")
            ok = False
        else:
            seen[nm] = int(lines[i])
    return ok


def trim_ids(matrix: Matrix, length: int | None, out: Findings) -> Matrix | None:
    """Cut ids to ``length`` characters (e.g. 12 for a TCGA patient barcode).

    Two samples that become one id are an error naming both rows.
    """
    if length is None:
        return matrix
    ids = [pid[:length] for pid in matrix.ids]
    counts = Counter(ids)
    bad = False
    for pid, c in counts.items():
        if c > 1:
            rows = [int(matrix.lines[i]) for i, x in enumerate(ids) if x == pid]
            out.error(
                f"{c} samples become patient {pid!r} when ids are cut to {length} characters "
                f"(rows {', '.join(map(str, rows))}); keep one sample per patient",
                file=matrix.file, row=rows[1], kind="duplicate patient ids",
            )
            bad = True
    if bad:
        return None
    matrix.ids = ids
    return matrix


def stack_samples(
    rel: str,
    samples: list[tuple[str, int, str, list[str], np.ndarray]],
    out: Findings,
    value_name: str | None = None,
) -> Matrix | None:
    """One matrix from per-sample files ``(sample id, sheet line, file, features, values)``.

    Every file must name the same features as the first (in any order).
    """
    if not samples:
        out.error("no sample file of this modality was found", file=rel)
        return None
    _, _, first_file, ref, _ = samples[0]
    pos = {f: j for j, f in enumerate(ref)}
    values = np.full((len(samples), len(ref)), np.nan)
    ok = True
    for i, (_, _, file, feats, vals) in enumerate(samples):
        if feats != ref:
            mine = set(feats)
            missing = [f for f in ref if f not in mine]
            extra = [f for f in feats if f not in pos]
            if missing or extra:
                out.error(
                    f"features differ from {first_file}: {len(missing)} missing "
                    f"({preview(missing)}), {len(extra)} unexpected ({preview(extra)})",
                    file=file, row=None,
                )
                ok = False
                continue
            values[i, [pos[f] for f in feats]] = vals
        else:
            values[i] = vals
    if not ok:
        return None
    ids = [s[0] for s in samples]
    lines = np.array([s[1] for s in samples], dtype=np.int64)
    if not unique_names(ids, rel, "Sample ID", lines, out, what="sample"):
        return None
    return Matrix(rel, ids, lines, list(ref), values, value_name)
