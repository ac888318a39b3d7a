"""A site's privacy ledger: the append-only file of every DP-SGD round it has trained,
``STATE_DIR/privacy-ledger.json``::

    {"format": "cancer-alpha-privacy-ledger", "version": 3, "accountant": "rdp",
     "entries": [{"run_id": "...", "round": 1, "noise_multiplier": 1.2,
                  "sample_rate": 0.05, "steps": 80, "timestamp": "2025-...+00:00",
                  "delta": 4e-05}]}

Each entry records the delta the site accounted at (its budget's delta). A release of a
distributed-DP run, whose noise is integer Skellam noise, also records
``"mechanism": "skellam"`` (version 3): once a ledger holds one, its epsilon is taken by
RDP at integer orders, where the Skellam bound holds (:mod:`common.discrete_dp`).
Version 1 files, whose entries have no ``delta``, are read as they are; appending to one
writes the current version and leaves the old entries as they were.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from client.privacy.accounting import (
    ACCOUNTANTS,
    History,
    check_round_args,
    epsilon_of,
    is_int,
    is_real,
    merge_history,
)
from common.atomic import write_json_atomic

logger = logging.getLogger(__name__)

LEDGER_FILE = "privacy-ledger.json"
LEDGER_FORMAT = "cancer-alpha-privacy-ledger"
LEDGER_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
MECHANISMS = ("gaussian", "skellam")


class LedgerError(ValueError):
    """A privacy ledger cannot be read or trusted; it is left as it is."""


def ledger_path(state_dir: Path) -> Path:
    """Where a site keeps its ledger inside its state directory."""
    return Path(state_dir) / LEDGER_FILE


@dataclass(frozen=True)
class LedgerEntry:
    """The DP-SGD steps of one training round at one site."""

    run_id: str
    round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    timestamp: str  # ISO 8601, UTC
    delta: float | None = None  # the budget's delta; None in version 1 ledgers
    mechanism: str = "gaussian"  # "skellam": integer noise, accounted at integer orders

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.run_id, str):
            problems.append(f"run_id must be a string, got {self.run_id!r}")
        if not is_int(self.round) or self.round < 0:
            problems.append(f"round must be an integer >= 0, got {self.round!r}")
        sigma = self.noise_multiplier
        if not is_real(sigma) or not math.isfinite(sigma) or sigma <= 0:
            problems.append(f"noise_multiplier must be a finite number > 0, got {sigma!r}")
        q = self.sample_rate
        if not is_real(q) or not 0 < q <= 1:
            problems.append(f"sample_rate must be a number in (0, 1], got {q!r}")
        if not is_int(self.steps) or self.steps < 0:
            problems.append(f"steps must be an integer >= 0, got {self.steps!r}")
        if not isinstance(self.timestamp, str):
            problems.append(f"timestamp must be an ISO 8601 string, got {self.timestamp!r}")
        else:
            try:
                datetime.fromisoformat(self.timestamp)
            except ValueError:
                problems.append(f"timestamp is not ISO 8601: {self.timestamp!r}")
        if self.delta is not None and (not is_real(self.delta) or not 0 < self.delta < 1):
            problems.append(f"delta must be a number with 0 < delta < 1, got {self.delta!r}")
        if self.mechanism not in MECHANISMS:
            problems.append(f"mechanism must be one of {MECHANISMS}, got {self.mechanism!r}")
        if problems:
            raise ValueError("; ".join(problems))
        # numpy scalars pass the checks; store plain Python numbers so they serialize.
        for name, kind in (("round", int), ("noise_multiplier", float),
                           ("sample_rate", float), ("steps", int)):
            object.__setattr__(self, name, kind(getattr(self, name)))
        if self.delta is not None:
            object.__setattr__(self, "delta", float(self.delta))

    def to_dict(self) -> dict[str, Any]:
        """The entry as stored; an entry without a recorded delta has no ``delta`` key,
        a Gaussian one no ``mechanism`` key (as in version 2)."""
        out = asdict(self)
        if self.delta is None:
            del out["delta"]
        if self.mechanism == "gaussian":
            del out["mechanism"]
        return out


_ENTRY_KEYS = frozenset(f.name for f in fields(LedgerEntry))
_ENTRY_KEYS_V2 = _ENTRY_KEYS - {"mechanism"}
_ENTRY_KEYS_V1 = _ENTRY_KEYS_V2 - {"delta"}
_TOP_KEYS = frozenset({"format", "version", "accountant", "entries"})


class PrivacyLedger:
    """Append-only record of every DP-SGD step a site has taken, persisted as JSON.

    Constructing a ledger reads the file when it exists (a missing file is an empty
    ledger, created on the first :meth:`record`); a file that cannot be trusted raises
    :class:`LedgerError` and is never overwritten.
    """

    def __init__(self, path: Path, accountant: str | None = "rdp") -> None:
        """``accountant`` None means the file's accountant (``rdp`` for a new ledger)."""
        if accountant is not None and accountant not in ACCOUNTANTS:
            raise ValueError(f"unknown accountant {accountant!r}; use one of {ACCOUNTANTS}")
        self.path = Path(path)
        entries, stored = _read_ledger(self.path)
        if stored is not None and accountant is not None and stored != accountant:
            # Epsilons of different accountants do not compose: never mix them in one file.
            raise LedgerError(f"{self.path}: the ledger is accounted with {stored!r}, "
                              f"not {accountant!r}")
        self.accountant: str = stored or accountant or "rdp"
        self._entries: tuple[LedgerEntry, ...] = entries

    @classmethod
    def open(cls, path: Path, accountant: str | None = "rdp") -> PrivacyLedger:
        """Read the ledger at ``path``, or start an empty one when there is no file."""
        return cls(path, accountant)

    @property
    def entries(self) -> tuple[LedgerEntry, ...]:
        return self._entries

    @property
    def delta(self) -> float | None:
        """The delta the site accounts at: the latest one recorded, None when no entry
        records one (an empty or version 1 ledger)."""
        recorded = [e.delta for e in self._entries if e.delta is not None]
        return recorded[-1] if recorded else None

    def recorded_deltas(self) -> list[float]:
        """Every distinct delta the entries record, in the order first recorded."""
        return list(dict.fromkeys(e.delta for e in self._entries if e.delta is not None))

    @property
    def discrete(self) -> bool:
        """Whether an entry is a discrete (Skellam) release: then every epsilon of the
        ledger is taken at integer RDP orders."""
        return any(e.mechanism == "skellam" for e in self._entries)

    def history(self) -> History:
        """``(noise_multiplier, sample_rate, steps)`` with identical pairs merged.

        Composition does not depend on order, so merged steps give the same epsilon,
        and the accountants' cost is per distinct pair.
        """
        return merge_history((e.noise_multiplier, e.sample_rate, e.steps)
                             for e in self._entries)

    def epsilon(self, delta: float) -> float:
        """Cumulative epsilon spent at ``delta`` (0.0 for an empty ledger)."""
        return epsilon_of(self.history(), delta, self.accountant,
                          integer_orders=self.discrete)

    def epsilon_after(
        self, noise_multiplier: float, sample_rate: float, steps: int, delta: float
    ) -> float:
        """Epsilon after one more round of ``steps`` at (noise, rate); nothing is recorded."""
        check_round_args(noise_multiplier, sample_rate, steps)
        return epsilon_of(self.projected_history(noise_multiplier, sample_rate, steps), delta,
                          self.accountant, integer_orders=self.discrete)

    def epsilon_with(self, releases: list[tuple[float, float, int]], delta: float, *,
                     discrete: bool = False) -> float:
        """Epsilon after ``releases`` ``(noise, rate, steps)`` more (``discrete``: Skellam
        releases); nothing is recorded."""
        for sigma, q, steps in releases:
            check_round_args(sigma, q, steps)
        return epsilon_of(merge_history([*self.history(), *releases]), delta, self.accountant,
                          integer_orders=self.discrete or discrete)

    def projected_history(
        self, noise_multiplier: float, sample_rate: float, steps: int, rounds: int = 1
    ) -> History:
        """The history after ``rounds`` more rounds of ``steps`` at (noise, rate)."""
        extra = [(float(noise_multiplier), float(sample_rate), int(steps))] * rounds
        return merge_history([*self.history(), *extra])

    def record(self, entry: LedgerEntry) -> None:
        """Append ``entry`` and persist the ledger atomically.

        The file is re-read first: if it was changed behind this object's back in a way
        that is not an append (truncated, replaced, corrupted), recording is refused
        rather than overwriting the account.
        """
        if not isinstance(entry, LedgerEntry):
            raise TypeError(f"expected a LedgerEntry, got {type(entry).__name__}")
        on_disk, stored = _read_ledger(self.path)
        if stored is not None and stored != self.accountant:
            raise LedgerError(f"{self.path}: the ledger on disk is now accounted with "
                              f"{stored!r}, not {self.accountant!r}; not recording")
        if on_disk[: len(self._entries)] != self._entries:
            raise LedgerError(f"{self.path}: the ledger on disk no longer starts with the "
                              f"{len(self._entries)} entries read earlier; not recording")
        if len(on_disk) > len(self._entries):
            logger.warning("%s: %d entries were appended by another process meanwhile",
                           self.path, len(on_disk) - len(self._entries))
        previous = self.delta
        if entry.delta is not None and previous is not None and entry.delta != previous:
            logger.warning("%s: this round is accounted at delta %g, earlier rounds at %g",
                           self.path, entry.delta, previous)
        entries = (*on_disk, entry)
        # indent=1 keeps a long ledger readable and small; NaN is refused, never written.
        write_json_atomic(self.path, {
            "format": LEDGER_FORMAT,
            # A ledger of Gaussian entries only stays readable by releases that know
            # version 2; a release that cannot account Skellam entries must refuse them.
            "version": LEDGER_VERSION if any(e.mechanism != "gaussian" for e in entries)
            else 2,
            "accountant": self.accountant,
            "entries": [e.to_dict() for e in entries],
        }, private=True, indent=1)
        self._entries = entries

    def summary(self, delta: float) -> dict[str, Any]:
        """Path, entry and step counts, cumulative epsilon at ``delta``, distinct runs."""
        return {
            "path": str(self.path),
            "accountant": self.accountant,
            "entries": len(self._entries),
            "steps": sum(e.steps for e in self._entries),
            "epsilon": self.epsilon(delta),
            "delta": delta,
            "recorded_deltas": self.recorded_deltas(),
            "runs": list(dict.fromkeys(e.run_id for e in self._entries)),
        }


def _read_ledger(path: Path) -> tuple[tuple[LedgerEntry, ...], str | None]:
    """Entries and accountant of the file at ``path``; ``((), None)`` when there is none."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return (), None
    except (OSError, UnicodeDecodeError) as exc:
        raise LedgerError(f"{path}: cannot read the privacy ledger: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LedgerError(f"{path}: the privacy ledger is not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != LEDGER_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise LedgerError(f"{path}: not a privacy ledger (format {found!r}, expected "
                          f"{LEDGER_FORMAT!r})")
    version = data.get("version")
    if version not in READABLE_VERSIONS:
        raise LedgerError(f"{path}: privacy ledger version {version!r} is not supported "
                          f"(this release reads versions "
                          f"{', '.join(map(str, READABLE_VERSIONS))})")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        # Rewriting the file would drop them: refuse rather than lose information.
        raise LedgerError(f"{path}: unknown keys in the privacy ledger: {sorted(unknown)}")
    accountant = data.get("accountant")
    if accountant not in ACCOUNTANTS:
        raise LedgerError(f"{path}: unknown accountant {accountant!r} (expected one of "
                          f"{ACCOUNTANTS})")
    raw = data.get("entries")
    if not isinstance(raw, list):
        raise LedgerError(f"{path}: 'entries' must be a list, got {type(raw).__name__}")
    # Version 1 entries never record a delta; version 2 entries may predate it; version 3
    # entries name their mechanism when it is not Gaussian.
    allowed = {1: (_ENTRY_KEYS_V1,), 2: (_ENTRY_KEYS_V2, _ENTRY_KEYS_V1),
               3: (_ENTRY_KEYS, _ENTRY_KEYS_V2, _ENTRY_KEYS_V1)}[version]
    entries = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or set(item) not in allowed:
            keys = sorted(item) if isinstance(item, dict) else type(item).__name__
            raise LedgerError(f"{path}: entry {i}: expected keys {sorted(allowed[0])}, "
                              f"got {keys}")
        try:
            entries.append(LedgerEntry(**item))
        except ValueError as exc:
            raise LedgerError(f"{path}: entry {i}: {exc}") from exc
    return tuple(entries), accountant
