"""Seconds per named phase of a piece of work, each measured from the end of the last."""

from __future__ import annotations

import time


class PhaseClock:
    """Seconds per named phase, each measured from the end of the previous one."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> float:
        """End ``phase`` now; its seconds."""
        now = time.perf_counter()
        self.phases[phase] = self.phases.get(phase, 0.0) + now - self._last
        self._last = now
        return self.phases[phase]

    def __str__(self) -> str:
        return ", ".join(f"{name} {seconds:.3f}" for name, seconds in self.phases.items())


def parse_phases(text: str) -> dict[str, float]:
    """The phases of a logged :class:`PhaseClock` (``"pull 0.120, clientapp 2.000"``)."""
    phases = {}
    for part in text.split(","):
        name, _, seconds = part.strip().rpartition(" ")
        if name:
            phases[name] = float(seconds)
    return phases
