"""The coordinator's record of every site's epsilon, kept across runs.

Each round config tells the sites the epsilon the coordinator recorded for them
(:mod:`common.spend_record`), and a site whose ledger shows less refuses to train
(:mod:`client.privacy_guard`). Within one run the record comes from the run's own rounds;
this book carries it from one run to the next, so a ledger deleted between two runs is
caught at the next run's first round. A site reports its lifetime epsilon, so the book
keeps the largest value each site reported. Kept beside the coordinator's site registry
(deployment); simulations, whose virtual hospitals start with fresh ledgers unless told
otherwise, keep none.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

from common.atomic import write_json_atomic

logger = logging.getLogger(__name__)

SPEND_FILE = "site-spend.json"


class SpendBook:
    """Each site's largest reported epsilon, in a JSON file replaced atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.spent = self._read()

    def _read(self) -> dict[str, float]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ValueError(f"the coordinator's spend record {self.path} is unreadable "
                             f"({exc.__class__.__name__}); restore it from a backup") from None
        if not isinstance(raw, dict) or not all(
                isinstance(v, int | float) for v in raw.values()):
            raise ValueError(f"the coordinator's spend record {self.path} is malformed; "
                             "restore it from a backup")
        return {str(site): float(eps) for site, eps in raw.items()}

    def merged(self, run_spend: Mapping[str, float]) -> dict[str, float]:
        """What to tell the sites: the run's figures, never below the book's."""
        out = dict(self.spent)
        for site, eps in run_spend.items():
            out[site] = max(out.get(site, 0.0), float(eps))
        return out

    def note(self, run_spend: Mapping[str, float]) -> None:
        """Keep ``run_spend`` (written only when some site's figure grew)."""
        merged = self.merged(run_spend)
        if merged != self.spent:
            write_json_atomic(self.path, dict(sorted(merged.items())), private=True)
            self.spent = merged


def spend_book_for(run_dir: Path) -> SpendBook | None:
    """The book of the coordinator ``run_dir`` belongs to (``STATE_DIR/runs/<name>``,
    with a site registry); None for a run outside one (simulation)."""
    from server.coordinator.registry import REGISTRY_FILE

    state = Path(run_dir).resolve().parents[1]
    if not (state / REGISTRY_FILE).exists():
        return None
    return SpendBook(state / SPEND_FILE)
