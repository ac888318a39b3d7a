"""Reading one CSV file of a dataset: positional parsing, patient ids, modality values.

Every problem becomes a finding naming the file, column and 1-based row; a function
returns None when the file cannot be used at all.
"""

from __future__ import annotations

import csv
import re
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.dataset.findings import Findings, examples, preview
from common.dataset.manifest import TableSpec
from common.dataset.qc import QcRecord, apply_qc


@dataclass
class Raw:
    """One CSV file read with positional columns, blank lines dropped."""

    header: list[str] | None
    frame: pd.DataFrame  # columns are positions 0..k-1
    lines: np.ndarray  # 1-based line number of each row
    id_pos: int | None


@dataclass
class Table:
    """One modality file, parsed and checked."""

    file: str
    ids: list[str]
    lines: np.ndarray
    features: list[str]
    values: np.ndarray  # float32 [n, F]; rows of absent patients are zeros
    present: np.ndarray  # bool [n]: the row has values
    qc: QcRecord | None = None  # what QC did (see common.dataset.qc)


def read_table(directory: Path, spec: TableSpec, out: Findings, *, text: bool) -> Raw | None:
    """Read one CSV with positional columns; report problems and return None on failure."""
    rel = spec.file
    path = directory / rel
    try:
        if path.stat().st_size == 0:
            out.error("file is empty", file=rel)
            return None
        header = None
        if spec.header:
            with path.open(newline="", encoding="utf-8-sig") as fh:
                header = next(csv.reader(fh, delimiter=spec.delimiter), None)
            if not header:
                out.error("the first line (header) is empty", file=rel, row=1)
                return None
            header = [h.strip() for h in header]
        id_pos = spec.index_column
        if isinstance(id_pos, str):
            assert header is not None  # manifest parsing guarantees a header for names
            if id_pos not in header:
                out.error(
                    f"no patient id column named {id_pos!r}; columns: {preview(header)}",
                    file=rel,
                    row=1,
                )
                return None
            id_pos = header.index(id_pos)
        kwargs: dict[str, Any] = {
            "sep": spec.delimiter,
            "header": None,
            "skiprows": 1 if header else 0,
            "skip_blank_lines": False,
            "encoding": "utf-8-sig",
        }
        if header:
            # Fixed width from the header: longer rows raise, shorter ones are NaN-padded.
            kwargs.update(names=list(range(len(header))), index_col=False)
        if text:
            kwargs.update(dtype=str, keep_default_na=False, na_filter=False)
        elif id_pos is not None:
            kwargs.update(dtype={id_pos: str})
        frame = pd.read_csv(path, **kwargs)
        if text:
            # Short rows are padded with NaN even without NA parsing.
            frame = frame.fillna("")
    except pd.errors.EmptyDataError:
        out.error("no data rows (zero patients)", file=rel)
        return None
    except pd.errors.ParserError as e:
        m = re.search(r"line (\d+)", str(e))
        msg = str(e).split("C error: ")[-1].strip()
        out.error(f"cannot parse the file: {msg}", file=rel, row=int(m.group(1)) if m else None)
        return None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        out.error(f"cannot read the file: {e}", file=rel)
        return None
    if id_pos is not None and id_pos >= frame.shape[1]:
        out.error(
            f"index_column {id_pos} is beyond the file's {frame.shape[1]} column(s)", file=rel
        )
        return None
    lines = np.arange(len(frame)) + (2 if header else 1)
    blank = (frame == "").all(axis=1) if text else frame.isna().all(axis=1)
    blank = blank.to_numpy()
    if id_pos is not None:
        keep = ~blank  # a blank line cannot be anybody's row
    else:
        # Rows are matched by position: only trailing blank lines are not patients.
        keep = np.ones(len(frame), dtype=bool)
        nonblank = np.flatnonzero(~blank)
        keep[(nonblank[-1] + 1 if len(nonblank) else 0) :] = False
    if not keep.all():
        frame = frame.loc[keep].reset_index(drop=True)
        lines = lines[keep]
    return Raw(header, frame, lines, id_pos)


def read_ids(raw: Raw, prefix: str, rel: str, out: Findings) -> list[str]:
    """Patient ids per row ("" where empty); empty and duplicate ids are reported."""
    n = len(raw.frame)
    if raw.id_pos is None:
        width = max(4, len(str(n)))
        return [f"{prefix}-{i + 1:0{width}d}" for i in range(n)]
    col = raw.frame[raw.id_pos]
    name = raw.header[raw.id_pos] if raw.header else None
    empty = (col.isna() | (col.astype(str).str.strip() == "")).to_numpy()
    for i in np.flatnonzero(empty):
        out.error(
            "empty patient id", file=rel, column=name, row=raw.lines[i], kind="empty patient ids"
        )
    ids = ["" if e else str(v).strip() for v, e in zip(col.tolist(), empty, strict=True)]
    dup = pd.Series(ids).duplicated(keep=False).to_numpy() & ~empty
    if dup.any():
        rows: dict[str, list[int]] = {}
        for i in np.flatnonzero(dup):
            rows.setdefault(ids[i], []).append(int(raw.lines[i]))
        for pid, where in rows.items():
            out.error(
                f"duplicate patient id {pid!r} (rows {', '.join(map(str, where))})",
                file=rel,
                column=name,
                row=where[1],
                kind="duplicate patient ids",
            )
    return ids


def _feature_names(
    directory: Path, spec: TableSpec, raw: Raw, positions: list[int], out: Findings
) -> list[str] | None:
    rel = spec.file
    if spec.feature_names_file:
        names_rel = spec.feature_names_file
        try:
            text = (directory / names_rel).read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            out.error(f"feature names file {names_rel!r} (for {rel}) not found", file=names_rel)
            return None
        except (OSError, UnicodeDecodeError) as e:
            out.error(f"cannot read the feature names file: {e}", file=names_rel)
            return None
        names = [line.strip() for line in text.splitlines()]
        while names and not names[-1]:
            names.pop()
        if len(names) != len(positions):
            out.error(
                f"{names_rel} names {len(names)} features but {rel} has {len(positions)} "
                "feature columns",
                file=rel,
            )
            return None
        where, from_file = names_rel, True
    else:
        assert raw.header is not None
        names = [raw.header[p].strip() for p in positions]
        where, from_file = rel, False
    ok = True
    for j, nm in enumerate(names):
        if not nm:
            out.error(
                f"feature column {positions[j] + 1} has no name",
                file=where,
                row=j + 1 if from_file else 1,
                kind="unnamed columns",
            )
            ok = False
    counts = Counter(names)
    for nm, c in counts.items():
        if nm and c > 1:
            cols = [str(positions[j] + 1) for j, x in enumerate(names) if x == nm]
            out.error(
                f"duplicate column name (columns {', '.join(cols)}, 1-based)",
                file=where,
                column=nm,
                kind="duplicate column names",
            )
            ok = False
    return names if ok else None


def read_modality(directory: Path, spec: TableSpec, prefix: str, out: Findings) -> Table | None:
    """One modality file as a checked :class:`Table`; None when it cannot be used."""
    rel = spec.file
    raw = read_table(directory, spec, out, text=False)
    if raw is None:
        return None
    if len(raw.frame) == 0:
        out.error("no data rows (zero patients)", file=rel)
        return None
    positions = [c for c in range(raw.frame.shape[1]) if c != raw.id_pos]
    if not positions:
        out.error("no feature columns", file=rel)
        return None
    ids = read_ids(raw, prefix, rel, out)
    names = _feature_names(directory, spec, raw, positions, out)
    block = raw.frame[positions]
    # Numeric columns parse fast; only columns pandas could not parse are examined cell
    # by cell, to name the offending values.
    bad = np.zeros(block.shape, dtype=bool)
    text_cols = [k for k, c in enumerate(positions) if not _is_numeric(block[c])]
    if text_cols:
        block = block.copy()
        for k in text_cols:
            c = positions[k]
            conv = pd.to_numeric(block[c], errors="coerce")
            offending = (conv.isna() & block[c].notna()).to_numpy()
            bad[:, k] = offending
            for i in np.flatnonzero(offending):
                out.error(
                    f"non-numeric value {block[c].iloc[i]!r}",
                    file=rel,
                    column=_col_name(names, k, c),
                    row=raw.lines[i],
                    kind="non-numeric values",
                )
            block[c] = conv
    values = block.to_numpy(dtype=np.float64)
    present = check_values(values, ids, raw.lines, rel, spec, out,
                           lambda k: _col_name(names, k, positions[k]), offending=bad,
                           constant=True)
    if present is None or names is None:
        return None
    return finish_table(rel, ids, raw.lines, names, values, present, spec, None, out)


def check_values(
    values: np.ndarray,
    ids: list[str],
    lines: np.ndarray,
    rel: str,
    spec: TableSpec,
    out: Findings,
    column: Callable[[int], str],
    *,
    offending: np.ndarray | None = None,
    constant: bool = False,
) -> np.ndarray | None:
    """The missing-value and range checks every reader applies to its patients x features
    matrix; returns which rows hold the modality (None when no row does).

    A row with no value at all means the patient lacks the modality (warning); a feature
    with no value at all, infinite values and (with ``qc.missing = "error"``) a missing
    value inside a row are errors naming the file, ``column(k)`` and the row's line.
    ``offending`` cells (already reported, e.g. non-numeric) do not count as missing;
    ``constant`` also warns about constant features.
    """
    missing = np.isnan(values)
    if offending is not None:
        missing &= ~offending  # a row with an offending cell is not taken for empty
    present = ~missing.all(axis=1)
    if not present.any():
        out.error("no patient has a value in this file (every row is empty)", file=rel)
        return None
    dead = missing[present].all(axis=0)
    if spec.qc.missing == "drop-feature":
        dead[:] = False  # dropped by QC like any feature with a missing value
    for k in np.flatnonzero(dead):
        out.error("feature column has no value at all", file=rel, column=column(k),
                  kind="all-missing columns")
    if spec.qc.missing == "error":
        partial = missing & present[:, None] & ~dead[None, :]
        for i, k in np.argwhere(partial):
            out.error(
                f"missing value (empty or NaN) for patient {ids[i]!r}; only an entirely "
                "empty row may mark a missing modality (or set qc.missing to drop the "
                "feature or mask the patient)",
                file=rel, column=column(k), row=lines[i], kind="missing values",
            )
    # nan_to_num maps inf to the float64 maximum, so one comparison catches inf and
    # values that would overflow float32.
    huge = np.abs(np.nan_to_num(values)) > np.finfo(np.float32).max
    for i, k in np.argwhere(huge):
        out.error(f"infinite or out-of-range value {float(values[i, k])!r}", file=rel,
                  column=column(k), row=lines[i], kind="infinite values")
    if constant and present.sum() >= 2:
        live = values[present]
        with warnings.catch_warnings():
            # All-NaN columns are reported above; numpy would warn about them again.
            warnings.simplefilter("ignore", RuntimeWarning)
            top = np.nanmax(live, axis=0)
            const = (top == np.nanmin(live, axis=0)) & ~dead
        for k in np.flatnonzero(const):
            out.warning(
                f"constant column (every patient has {top[k]:g}): no information at this "
                "site; fine for e.g. a one-hot clinical column",
                file=rel, column=column(k), kind="constant columns",
            )
    if not present.all():
        idx = np.flatnonzero(~present)
        out.warning(
            f"{len(idx)} patient(s) have an entirely empty row (no value at all) and are "
            f"treated as lacking this modality: {examples([ids[i] for i in idx], lines[idx])}",
            file=rel, row=lines[idx[0]],
        )
    return present


def finish_table(
    rel: str,
    ids: list[str],
    lines: np.ndarray,
    names: list[str],
    values: np.ndarray,
    present: np.ndarray,
    spec: TableSpec,
    value_name: str | None,
    out: Findings,
) -> Table | None:
    """Apply the modality's QC and build the :class:`Table` (None on errors)."""
    errors_before = out.n_errors
    done = apply_qc(
        rel, ids, lines, names, values, present, spec.qc, spec.format, value_name, out
    )
    if out.n_errors > errors_before:
        return None
    if not done.features:
        out.error("no feature is left after QC", file=rel)
        return None
    if not done.present.any():
        out.error("no patient is left after QC", file=rel)
        return None
    matrix = done.values.astype(np.float32)
    matrix[~done.present] = 0.0
    return Table(rel, ids, lines, done.features, matrix, done.present, done.record)


def _is_numeric(col: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col)


def _col_name(names: list[str] | None, k: int, position: int) -> str:
    return names[k] if names is not None else f"#{position + 1}"

