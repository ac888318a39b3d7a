"""Metrics as Rich tables for the terminal (the commands' default output; ``--json``
prints the same numbers as JSON)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from rich.console import Console
from rich.table import Table

from common.metrics import METRIC_KEYS

COLUMNS = ("accuracy", "bal. acc.", "F1 macro", "F1 weighted", "AUC (OvR)")


def metrics_table(title: str, rows: Iterable[tuple[str, Mapping[str, Any]]]) -> Table:
    """One row per model: the five headline metrics."""
    table = Table(title=title)
    table.add_column("model", no_wrap=True)
    for col in COLUMNS:
        table.add_column(col, justify="right")
    for name, m in rows:
        table.add_row(name, *(_f(m.get(k)) for k in METRIC_KEYS))
    return table


def per_class_table(title: str, per_class: Mapping[str, Mapping[str, Any]]) -> Table:
    """Precision, recall, F1 and support of every class."""
    table = Table(title=title)
    table.add_column("class", no_wrap=True)
    for col in ("precision", "recall", "F1", "support"):
        table.add_column(col, justify="right")
    for name, s in per_class.items():
        table.add_row(name, _f(s.get("precision")), _f(s.get("recall")), _f(s.get("f1")),
                      str(s.get("support", "")))
    return table


def print_tables(*tables: Table) -> None:
    console = Console()
    for table in tables:
        console.print(table)


def _f(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    return "n/a" if value != value else f"{value:.3f}"
