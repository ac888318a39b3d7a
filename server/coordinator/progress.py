"""A run's progress read from its run directory while it runs: the completed rounds
(``checkpoint/state.json``, written after every completed round; ``metrics.json`` once
the run has finished), one line per round for ``coordinator start``."""

from __future__ import annotations

import contextlib
import json
import math
import threading
from collections.abc import Callable
from pathlib import Path

STATE_FILE = Path("checkpoint") / "state.json"
METRICS_FILE = "metrics.json"


def completed_rounds(run_dir: Path) -> list[dict]:
    """The run's completed round records, oldest first (empty before the first)."""
    for path in (run_dir / METRICS_FILE, run_dir / STATE_FILE):
        with contextlib.suppress(OSError, ValueError):  # absent, or being replaced
            rounds = json.loads(path.read_text()).get("rounds")
            if isinstance(rounds, list):
                return [r for r in rounds if isinstance(r, dict) and "round" in r]
    return []


def round_line(record: dict, rounds_total: int | None = None) -> str:
    """``round 2/5: val macro-F1 0.612, val loss 0.934, 3 sites, 1 rejected, 12.4 s``."""
    of = f"/{rounds_total}" if rounds_total else ""
    if record.get("failed"):
        return f"round {record['round']}{of}: failed (no usable aggregate)"
    parts = []
    val = record.get("val") or {}
    if _number(val.get("f1_macro")):
        parts.append(f"val macro-F1 {val['f1_macro']:.3f}")
    if _number(val.get("loss")):
        parts.append(f"val loss {val['loss']:.3f}")
    trained = [s for s in record.get("sites", []) if participated(s)]
    parts.append(f"{len(trained)} site{'s' if len(trained) != 1 else ''}")
    if record.get("rejected"):
        parts.append(f"{len(record['rejected'])} rejected")
    if _number(record.get("seconds")):
        parts.append(f"{record['seconds']:.1f} s")
    return f"round {record['round']}{of}: " + ", ".join(parts)


def participated(site: dict) -> bool:
    """Whether a round record's site entry is an aggregated update (a plain update
    carries its training size, a private one its epsilon)."""
    return "n_train" in site or "epsilon" in site


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) \
        and math.isfinite(value)


class RoundWatcher:
    """Calls ``emit`` with one line per newly completed round, polling the run directory
    every ``interval`` seconds in a daemon thread, until :meth:`stop` (which reports the
    rounds completed since the last poll)."""

    def __init__(self, run_dir: Path, emit: Callable[[str], None],
                 rounds_total: int | None = None, interval: float = 1.0) -> None:
        self.run_dir, self.emit = run_dir, emit
        self.rounds_total, self.interval = rounds_total, interval
        # A resumed run reports only the rounds it adds.
        self._seen = {r["round"] for r in completed_rounds(run_dir)}
        self._stopped = threading.Event()
        self._lock = threading.Lock()  # the thread and stop() may poll at once
        self._thread = threading.Thread(target=self._loop, name="round-watcher", daemon=True)

    def start(self) -> RoundWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=10)
        self.poll()

    def poll(self) -> None:
        with self._lock:
            for record in completed_rounds(self.run_dir):
                if record["round"] not in self._seen:
                    self._seen.add(record["round"])
                    self.emit(round_line(record, self.rounds_total))

    def _loop(self) -> None:
        while not self._stopped.wait(self.interval):
            self.poll()
