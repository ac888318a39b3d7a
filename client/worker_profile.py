"""Where a site worker's task spends its time: phase timings and, on request, cProfile.

Every task logs its phases (:class:`common.phase_clock.PhaseClock`: pulling the message,
the ClientApp itself, pushing the reply); with ``CANCER_ALPHA_WORKER_PROFILE=DIR`` the
worker also writes one cProfile file per task (``DIR/worker-PID-task-0001.prof``, read
with ``python -m pstats``).
"""

from __future__ import annotations

import cProfile
import marshal
import os
import pstats
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from common.atomic import write_bytes_atomic

PROFILE_ENV = "CANCER_ALPHA_WORKER_PROFILE"


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
