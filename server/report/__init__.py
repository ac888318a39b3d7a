"""The run report: a self-contained HTML page and a Markdown model card written into a
run directory (``report.html``, ``model_card.md``) by ``cancer-alpha report RUN_DIR``
and at the end of ``simulate`` and ``train-central``."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from server.report.settings import ReportSettings

logger = logging.getLogger(__name__)

REPORT_FILE = "report.html"
CARD_FILE = "model_card.md"

__all__ = ["CARD_FILE", "REPORT_FILE", "ReportSettings", "WrittenReport", "write_report"]


@dataclass(frozen=True)
class WrittenReport:
    html: Path
    card: Path
    seconds: float


def write_report(run_dir: Path, settings: ReportSettings = ReportSettings(),
                 out_dir: Path | None = None, notes: tuple[str, ...] = ()) -> WrittenReport:
    """Compute the report of ``run_dir`` and write both files (into ``out_dir``, default
    the run directory) atomically; ``notes`` are shown first among the page's notes."""
    from common.atomic import write_text_atomic
    from server.report.card import render_card
    from server.report.content import build_content
    from server.report.html import render_html

    content = build_content(Path(run_dir), settings)
    content.notes[:0] = notes
    out = Path(out_dir) if out_dir else Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    html, card = out / REPORT_FILE, out / CARD_FILE
    write_text_atomic(html, render_html(content))
    write_text_atomic(card, render_card(content))
    logger.info("wrote %s and %s in %.1f s", html, card, content.seconds)
    return WrittenReport(html, card, content.seconds)
