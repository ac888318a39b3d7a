"""The site worker as a child of ``cancer-alpha site start``: started, watched, stopped.

The launcher starts the SuperNode in ``--isolation process`` and :class:`SiteWorker`
beside it (:mod:`client.worker`). The worker's output goes into the site's log with the
SuperNode's. Should the worker die while the SuperNode runs (killed, out of memory), it
is started again: without it the SuperNode would hold its tasks and the coordinator
would time out waiting for this site.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping

from common.site_config import SiteConfig

logger = logging.getLogger(__name__)

# Do not restart faster than this: a worker that cannot start would spin.
RESTART_DELAY = 2.0


def worker_command(cfg: SiteConfig, parent_pid: int) -> list[str]:
    """The site worker for this site's SuperNode (its Runtime API on loopback)."""
    return [sys.executable, "-m", "client.worker", "--runtime-api-address",
            f"127.0.0.1:{cfg.port}", "--parent-pid", str(parent_pid)]


class SiteWorker:
    """Runs the site worker while ``alive()`` (the SuperNode runs); restarts it if it dies."""

    def __init__(self, cfg: SiteConfig, env: Mapping[str, str],
                 write_line: Callable[[bytes], object], *,
                 alive: Callable[[], bool]) -> None:
        self.cfg = cfg
        self.env = dict(env)
        self.write_line = write_line
        self.alive = alive
        self.starts = 0
        self._proc: subprocess.Popen | None = None
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        self._spawn()
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()

    def _spawn(self) -> None:
        # The launcher's PID as parent: the worker stops itself if the launcher is killed.
        cmd = worker_command(self.cfg, os.getpid())
        logger.info("starting: %s", " ".join(cmd))
        self._proc = subprocess.Popen(cmd, env=self.env, cwd=self.cfg.state_dir,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.starts += 1
        threading.Thread(target=self._pump, args=(self._proc,), daemon=True).start()

    def _pump(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            self.write_line(raw)

    def _watch(self) -> None:
        while not self._stopping.is_set():
            assert self._proc is not None
            code = self._proc.wait()
            if self._stopping.is_set() or not self.alive():
                return
            self.write_line(f"site worker exited with code {code}; starting it again\n"
                            .encode())
            time.sleep(RESTART_DELAY)
            if self._stopping.is_set() or not self.alive():
                return
            self._spawn()

    def stop(self, grace: float = 10.0) -> None:
        """Stop the worker (SIGINT, then SIGKILL after ``grace`` seconds)."""
        self._stopping.set()
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
