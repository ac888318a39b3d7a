"""The manifest's ``[fairness]`` table: the clinical columns the run report judges
fairness by, and bin edges of numeric ones."""

from __future__ import annotations

from typing import Any


def parse_fairness(table: Any) -> tuple[tuple[str, ...], tuple[tuple[str, tuple[float, ...]], ...]]:
    """``[fairness] subgroups = [...]`` and ``[fairness.bins] column = [edges]``."""
    from common.dataset.manifest import ManifestError, _check_keys

    fair = _check_keys(table, ("subgroups", "bins"), "[fairness]")
    names = fair.get("subgroups", [])
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise ManifestError("[fairness] subgroups must be a list of column names")
    if len(set(names)) != len(names):
        raise ManifestError("[fairness] subgroups has duplicates")
    bins = fair.get("bins", {})
    if not isinstance(bins, dict):
        raise ManifestError("[fairness.bins] must be a table: column = [edges]")
    out = []
    for column, edges in bins.items():
        if column not in names:
            raise ManifestError(f"[fairness.bins] {column!r} is not in [fairness] subgroups")
        if (not isinstance(edges, list) or not edges
                or not all(isinstance(e, int | float) and not isinstance(e, bool)
                           for e in edges)
                or sorted(edges) != edges or len(set(edges)) != len(edges)):
            raise ManifestError(f"[fairness.bins] {column!r}: edges must be a non-empty, "
                                "strictly increasing list of numbers")
        out.append((column, tuple(float(e) for e in edges)))
    return tuple(names), tuple(out)
