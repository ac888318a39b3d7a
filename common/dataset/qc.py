"""Per-modality quality control and normalisation, applied as a modality is read.

Steps, in this order (each optional, set in a manifest's ``[modalities.<m>] qc`` table):

1. missing values (``missing``): ``"error"`` (default; a missing value inside a row is an
   error naming file, column and row), ``"drop-feature"`` (a feature with any missing
   value is dropped at this site; across sites it becomes a feature this site lacks, see
   :mod:`common.dataset.harmonization`) or ``"mask-patient"`` (a patient with a missing
   value is treated as lacking the modality). Values are never imputed;
2. low-expression filter (``min_expression``, ``min_fraction``): keep a feature when at
   least ``min_fraction`` of the patients who have the modality (and at least one) reach
   ``min_expression``, on the values as read (e.g. counts);
3. ``beta_to_m``: methylation beta values (in [0, 1]) become M values
   ``log2(b / (1 - b))``, beta clipped to [BETA_EPSILON, 1 - BETA_EPSILON];
4. ``log_transform``: ``"log2p1"`` (``log2(x + 1)``, values must be >= 0) or ``"none"``.

What was done (settings and feature counts) is a :class:`QcRecord`, kept in the
validation report, in ``site check``'s output and in a run's ``config.json``
(``data_origin.preprocessing``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from common.dataset.findings import Findings, examples

MISSING_POLICIES = ("error", "drop-feature", "mask-patient")
LOG_TRANSFORMS = ("none", "log2p1")
BETA_EPSILON = 1e-3
QC_KEYS = ("missing", "log_transform", "beta_to_m", "min_expression", "min_fraction")


@dataclass(frozen=True)
class QcSettings:
    """What to do to one modality's values after reading."""

    missing: str = "error"
    log_transform: str = "none"
    beta_to_m: bool = False
    min_expression: float | None = None
    min_fraction: float = 0.0

    @classmethod
    def parse(cls, table: Any, where: str) -> QcSettings:
        """Validate a manifest ``qc`` table; raise ValueError naming the bad key."""
        if not isinstance(table, dict):
            raise ValueError(f"{where}: qc must be a table")
        unknown = sorted(set(table) - set(QC_KEYS))
        if unknown:
            raise ValueError(f"{where}: unknown qc key(s) {unknown}; allowed: {list(QC_KEYS)}")
        s = cls(**table)
        if s.missing not in MISSING_POLICIES:
            raise ValueError(f"{where}: qc.missing must be one of {list(MISSING_POLICIES)}")
        if s.log_transform not in LOG_TRANSFORMS:
            raise ValueError(f"{where}: qc.log_transform must be one of {list(LOG_TRANSFORMS)}")
        if not isinstance(s.beta_to_m, bool):
            raise ValueError(f"{where}: qc.beta_to_m must be true or false")
        if s.min_expression is not None and not _is_number(s.min_expression):
            raise ValueError(f"{where}: qc.min_expression must be a number")
        if not _is_number(s.min_fraction) or not 0 <= s.min_fraction <= 1:
            raise ValueError(f"{where}: qc.min_fraction must be a number in [0, 1]")
        if s.beta_to_m and s.log_transform != "none":
            raise ValueError(f"{where}: qc.beta_to_m and qc.log_transform exclude each other")
        return s


@dataclass(frozen=True)
class QcRecord:
    """What QC did to one modality at one site (settings and counts, no values)."""

    format: str
    value: str | None
    missing: str
    log_transform: str
    beta_to_m: bool
    min_expression: float | None
    min_fraction: float
    features_read: int
    features_kept: int
    features_dropped_missing: int
    features_dropped_low_expression: int
    patients_masked_missing: int

    def record(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def trivial(self) -> bool:
        """A CSV read as is: nothing worth recording."""
        return self.format == "csv" and self.features_kept == self.features_read and (
            self.missing == "error" and self.log_transform == "none" and not self.beta_to_m
            and self.min_expression is None
        )

    def steps(self) -> str:
        """One line for people, e.g. ``missing=error, low-expression 5 dropped, log2p1``."""
        parts = [f"missing={self.missing}"]
        if self.features_dropped_missing:
            parts.append(f"{self.features_dropped_missing} feature(s) dropped for missing values")
        if self.patients_masked_missing:
            parts.append(f"{self.patients_masked_missing} patient(s) masked for missing values")
        if self.min_expression is not None:
            parts.append(
                f"low-expression filter (>= {self.min_expression:g} in >= "
                f"{self.min_fraction:.0%}): {self.features_dropped_low_expression} dropped"
            )
        if self.beta_to_m:
            parts.append("beta -> M")
        if self.log_transform != "none":
            parts.append(self.log_transform)
        return ", ".join(parts)


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


@dataclass
class QcResult:
    """The values after QC (NaN-free where the patient is present) and what was done."""

    features: list[str]
    values: np.ndarray  # float64 [n, F']
    present: np.ndarray  # bool [n]
    record: QcRecord


def apply_qc(
    rel: str,
    ids: list[str],
    lines: np.ndarray,
    features: list[str],
    values: np.ndarray,
    present: np.ndarray,
    settings: QcSettings,
    fmt: str,
    value_name: str | None,
    out: Findings,
) -> QcResult:
    """Apply ``settings`` to one modality; errors name the file, column and row."""
    n_read = len(features)
    keep = np.ones(n_read, dtype=bool)
    present = present.copy()
    missing = np.isnan(values) & present[:, None]
    dropped_missing = masked = 0
    if settings.missing == "drop-feature":
        gone = missing.any(axis=0)
        dropped_missing = int(gone.sum())
        keep &= ~gone
    elif settings.missing == "mask-patient":
        hit = missing.any(axis=1)
        masked = int(hit.sum())
        if masked:
            out.warning(
                f"{masked} patient(s) have missing values and are treated as lacking this "
                f"modality (qc.missing = mask-patient): "
                f"{examples([ids[i] for i in np.flatnonzero(hit)], lines[hit])}",
                file=rel,
            )
        present &= ~hit
    live = present[:, None] & keep[None, :]
    if settings.beta_to_m or settings.log_transform == "log2p1":
        low, high = (0.0, 1.0) if settings.beta_to_m else (0.0, np.inf)
        with np.errstate(invalid="ignore"):
            bad = live & ((values < low) | (values > high))
        what = "a beta value must lie in [0, 1]" if settings.beta_to_m else (
            "log2p1 needs values >= 0"
        )
        for i, k in np.argwhere(bad):
            out.error(
                f"value {values[i, k]:g} out of range: {what}",
                file=rel,
                column=features[k],
                row=lines[i],
                kind="out-of-range values",
            )
    dropped_low = 0
    if settings.min_expression is not None and present.any():
        with np.errstate(invalid="ignore"):
            reach = (values[present] >= settings.min_expression).sum(axis=0)
        need = max(1, int(np.ceil(settings.min_fraction * int(present.sum()))))
        low_expr = keep & (reach < need)
        dropped_low = int(low_expr.sum())
        keep &= ~low_expr
    out_values = values[:, keep].astype(np.float64, copy=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        if settings.beta_to_m:
            b = np.clip(out_values, BETA_EPSILON, 1 - BETA_EPSILON)
            out_values = np.where(np.isnan(out_values), np.nan, np.log2(b / (1 - b)))
        elif settings.log_transform == "log2p1":
            out_values = np.log2(out_values + 1.0)
    kept = [f for f, k in zip(features, keep, strict=True) if k]
    record = QcRecord(
        format=fmt,
        value=value_name,
        missing=settings.missing,
        log_transform=settings.log_transform,
        beta_to_m=settings.beta_to_m,
        min_expression=settings.min_expression,
        min_fraction=settings.min_fraction,
        features_read=n_read,
        features_kept=len(kept),
        features_dropped_missing=dropped_missing,
        features_dropped_low_expression=dropped_low,
        patients_masked_missing=masked,
    )
    return QcResult(kept, out_values, present, record)


def summary_rows(modalities: dict[str, dict]) -> list[tuple[str, str, str, str]]:
    """``(modality, format/value, features read -> kept, steps)`` per modality with QC,
    from a validation report's ``modalities`` (for ``site check``)."""
    rows = []
    for m, info in modalities.items():
        rec = info.get("preprocessing")
        if not rec:
            continue
        r = QcRecord(**rec)
        fmt = r.format + (f" ({r.value})" if r.value else "")
        rows.append((m, fmt, f"{r.features_read} -> {r.features_kept}", r.steps()))
    return rows
