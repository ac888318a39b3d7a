"""Local processes and ports: what the coordinator, the benchmarks and the real-process
tests need to start Flower's and the service's processes on loopback and stop them by PID.

Linux only (reads ``/proc``), like the deployment engine's tests and benchmarks.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (bound, then released)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def command_line(pid: int) -> str:
    """The process's command line, "" once it has ended (or is a zombie)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants, parents first."""
    tree, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(tree.get(p, []))
    return out


def processes_mentioning(text: str) -> list[int]:
    """Every other process whose command line contains ``text``."""
    return [int(e.name) for e in Path("/proc").iterdir()
            if e.name.isdigit() and int(e.name) != os.getpid()
            and text in command_line(int(e.name))]


def send_signal(pids: Iterable[int], sig: int) -> None:
    """Signal each process that still exists."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def stop_pids(pids: list[int], grace: float = 10.0) -> None:
    """SIGTERM, up to ``grace`` seconds for every process to end, then SIGKILL."""
    send_signal(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(command_line(p) for p in pids):
        time.sleep(0.2)
    send_signal(pids, signal.SIGKILL)


def stop_process(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM one child process, then SIGKILL after ``grace`` seconds; reap it."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
