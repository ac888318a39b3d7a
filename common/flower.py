"""Flower's command-line programs as the coordinator and the sites start them.

Both sides run Flower executables (``flower-superlink``, ``flwr``, ``flower-supernode``)
that start further Flower programs by name; both need them found in this Python's
environment first and an environment in which Flower stays offline.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from common.config import offline_flower_env


def flower_executable(name: str) -> str:
    """A Flower command next to this Python first (the venv), then on PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found next to {sys.executable} or on PATH; "
                                "install the project's dependencies (flwr)")
    return found


def flower_process_env() -> dict[str, str]:
    """This process's environment for a Flower child: offline, no runtime dependency
    installation, and this Python's bin first on PATH (Flower starts ``flower-superexec``,
    ``flwr-serverapp`` and ``flwr-clientapp`` by name)."""
    offline_flower_env()
    env = dict(os.environ)
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env
