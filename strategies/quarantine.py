"""Quarantine: a site whose updates keep being rejected is left out of the run.

After ``quarantine-after`` rejected rounds the update guard quarantines the site: its
later updates are rejected unread until an administrator releases it
(``cancer-alpha quarantine release``). Every change is an event appended to
``quarantine.jsonl`` in the run directory, one JSON object a line (what, which site,
when, by whom, why): the file is both the audit trail and the state, so a release
written by the command while the run goes on is seen by the coordinator at the next
round. The file is only ever appended to.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

QUARANTINE_FILE = "quarantine.jsonl"
QUARANTINED, RELEASED = "quarantined", "released"
COORDINATOR = "coordinator"


def quarantine_path(run_dir: Path | str) -> Path:
    return Path(run_dir) / QUARANTINE_FILE


def read_events(path: Path) -> list[dict[str, Any]]:
    """Every event in the file, oldest first (none when it does not exist)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_event(path: Path, event: dict[str, Any]) -> dict[str, Any]:
    """Append one event (with its UTC time) and flush it to disk."""
    event = {"time": datetime.now(UTC).isoformat(timespec="seconds"), **event}
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(json.dumps(event, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return event


def active_quarantines(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Site -> the event that quarantined it, for sites not released since."""
    active: dict[str, dict[str, Any]] = {}
    for event in events:
        if event["event"] == QUARANTINED:
            active[event["site"]] = event
        elif event["event"] == RELEASED:
            active.pop(event["site"], None)
    return active


def release(run_dir: Path | str, site: str, actor: str, note: str = "") -> dict[str, Any]:
    """Lift ``site``'s quarantine in the run at ``run_dir``; the event names ``actor``.

    Raises ValueError when the site is not quarantined (listing those that are).
    """
    path = quarantine_path(run_dir)
    active = active_quarantines(read_events(path))
    if site not in active:
        raise ValueError(f"site {site!r} is not quarantined in {run_dir}; quarantined: "
                         f"{sorted(active) or 'none'}")
    if not actor.strip():
        raise ValueError("a release must name who releases the site")
    return append_event(path, {"event": RELEASED, "site": site, "by": actor, "note": note})


@dataclass
class Quarantine:
    """The run's quarantine, kept in ``path`` (None: in memory only, e.g. unit tests)."""

    path: Path | None = None
    _events: list[dict[str, Any]] = field(default_factory=list)

    def events(self) -> list[dict[str, Any]]:
        """All events so far, re-read from the file (an admin may have appended)."""
        if self.path is not None:
            self._events = read_events(self.path)
        return list(self._events)

    def active(self) -> dict[str, dict[str, Any]]:
        return active_quarantines(self.events())

    def problem(self, site: str) -> str | None:
        """Why ``site``'s update is not read, or None when it is not quarantined."""
        event = self.active().get(site)
        if event is None:
            return None
        return (f"site quarantined since round {event['round']} after {event['rejections']} "
                "rejected rounds; an administrator must release it")

    def impose(self, site: str, server_round: int, rejections: int, reason: str) -> None:
        event = {"event": QUARANTINED, "site": site, "round": server_round,
                 "rejections": rejections, "last_reason": reason, "by": COORDINATOR}
        if self.path is None:
            self._events.append(event)
        else:
            append_event(self.path, event)
        logger.warning("round %d: site %s quarantined after %d rejected rounds (last: %s)",
                       server_round, site, rejections, reason)

    def release(self, site: str, actor: str, note: str = "") -> None:
        """In-memory release (a file-backed quarantine is released with :func:`release`)."""
        if self.path is not None:
            release(self.path.parent, site, actor, note)
            return
        if site not in self.active():
            raise ValueError(f"site {site!r} is not quarantined")
        self._events.append({"event": RELEASED, "site": site, "by": actor, "note": note})
