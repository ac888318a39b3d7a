"""Where a site worker's task spends its time: phase timings and, on request, cProfile.

Every task logs its phases (pulling the message from the SuperNode, the ClientApp itself,
pushing the reply); with ``CANCER_ALPHA_WORKER_PROFILE=DIR`` the worker also writes one
cProfile file per task (``DIR/worker-PID-task-0001.prof``, read with ``python -m pstats``).
"""

from __future__ import annotations

import cProfile
import marshal
import os
import pstats
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from common.atomic import write_bytes_atomic

PROFILE_ENV = "CANCER_ALPHA_WORKER_PROFILE"


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


class TaskProfiler:
    """cProfile around each task when given a directory; nothing otherwise."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.tasks = 0

    @classmethod
    def from_env(cls) -> TaskProfiler:
        value = os.environ.get(PROFILE_ENV, "").strip()
        return cls(Path(value) if value else None)

    @contextmanager
    def task(self) -> Iterator[None]:
        if self.directory is None:
            yield
            return
        profile = cProfile.Profile()
        profile.enable()
        try:
            yield
        finally:
            profile.disable()
            self.tasks += 1
            self.directory.mkdir(parents=True, exist_ok=True)
            # pstats' own file format (what Stats.dump_stats writes), written atomically.
            stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
            write_bytes_atomic(self.directory / f"worker-{os.getpid()}-task-{self.tasks:04d}.prof",
                               marshal.dumps(stats))
