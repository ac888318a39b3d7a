"""Validation findings: what a dataset check reports, and the error that carries them."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Findings of one kind per file before they are summarised as "... and N more".
MAX_REPEATS = 5
# Example ids quoted in one finding.
EXAMPLES = 5


@dataclass(frozen=True)
class Finding:
    """One validation problem; ``row`` is the 1-based line number (header = line 1)."""

    level: str  # "error" | "warning"
    message: str
    file: str | None = None
    column: str | None = None
    row: int | None = None

    def location(self) -> str:
        parts = []
        if self.file:
            parts.append(self.file)
        if self.column is not None:
            parts.append(f"column {self.column!r}")
        if self.row is not None:
            parts.append(f"row {self.row}")
        return ", ".join(parts)

    def __str__(self) -> str:
        where = self.location()
        return f"{where}: {self.message}" if where else self.message


@dataclass
class ValidationReport:
    """Everything :func:`inspect_dataset` found, plus a per-modality summary."""

    directory: Path
    findings: list[Finding]
    n_patients: int
    # modality -> {"file": str | None, "n_features": int, "n_patients_present": int}
    modalities: dict[str, dict]
    manifest: Path | None = None
    split: str | None = None
    # class name -> patient count (empty for unlabelled data)
    classes: dict[str, int] = field(default_factory=dict)
    # How the layout was chosen (see DatasetOrigin) and the manifest file's SHA-256.
    manifest_source: str | None = None
    manifest_sha256: str | None = None

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def manifest_summary(self) -> str:
        """One line for people: how the layout was chosen, the manifest file, its hash."""
        if self.manifest_source is None:
            return "none (the directory was not read)"
        if self.manifest_source == "convention":
            return "convention (no manifest)"
        parts = [self.manifest_source]
        if self.manifest is not None and str(self.manifest) not in self.manifest_source:
            parts.append(str(self.manifest))
        if self.manifest_sha256:
            parts.append(f"sha256 {self.manifest_sha256}")
        return ", ".join(parts)


class DatasetError(ValueError):
    """A dataset (or its manifest) has errors; ``report`` holds all findings."""

    def __init__(self, report: ValidationReport) -> None:
        super().__init__(report)
        self.report = report

    def __str__(self) -> str:
        errors = self.report.errors
        lines = [f"{self.report.directory}: {len(errors)} error(s) in the dataset:"]
        lines += [f"  - {f}" for f in errors]
        return "\n".join(lines)


class Findings:
    """Collects findings, capping repeats of one kind per file."""

    def __init__(self) -> None:
        self.items: list[Finding] = []
        self._count: Counter[tuple[str, str | None, str]] = Counter()
        self._last: dict[tuple[str, str | None, str], int] = {}
        # Errors reported so far, capped repeats included (readers compare before/after).
        self.n_errors = 0

    def add(
        self,
        level: str,
        message: str,
        *,
        file: str | None = None,
        column: str | None = None,
        row: int | None = None,
        kind: str | None = None,
    ) -> None:
        if level == "error":
            self.n_errors += 1
        if kind is not None:
            key = (level, file, kind)
            self._count[key] += 1
            if self._count[key] > MAX_REPEATS:
                return
            self._last[key] = len(self.items)
        self.items.append(Finding(level, message, file, column, None if row is None else int(row)))

    def error(self, message: str, **kw: Any) -> None:
        self.add("error", message, **kw)

    def warning(self, message: str, **kw: Any) -> None:
        self.add("warning", message, **kw)

    @property
    def has_errors(self) -> bool:
        return any(f.level == "error" for f in self.items)

    def finish(self) -> list[Finding]:
        out = list(self.items)
        # Insert from the back so earlier insertion points stay valid.
        for key, idx in sorted(self._last.items(), key=lambda kv: -kv[1]):
            extra = self._count[key] - MAX_REPEATS
            if extra > 0:
                level, file, kind = key
                out.insert(idx + 1, Finding(level, f"... and {extra} more {kind}", file))
        return out


def examples(ids: list[str], lines: np.ndarray | list[int] | None = None) -> str:
    """Up to ``EXAMPLES`` quoted ids (with their rows), then how many more."""
    shown = []
    for i, pid in enumerate(ids[:EXAMPLES]):
        shown.append(f"{pid!r}" + (f" (row {int(lines[i])})" if lines is not None else ""))
    more = f", ... ({len(ids) - EXAMPLES} more)" if len(ids) > EXAMPLES else ""
    return ", ".join(shown) + more


def preview(items: list[str], k: int = 8) -> str:
    return ", ".join(repr(x) for x in items[:k]) + (", ..." if len(items) > k else "")
