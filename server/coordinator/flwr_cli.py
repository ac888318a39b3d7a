"""The ``flwr`` CLI run against this coordinator's SuperLink."""

from __future__ import annotations

import json
import subprocess

from common.flower import flower_executable
from server.coordinator.settings import CONNECTION, CoordinatorError


def flwr(args: list[str], env: dict[str, str], *, timeout: float = 120.0,
         json_out: bool = True) -> dict:
    """Run a ``flwr`` CLI command against this SuperLink; its JSON answer."""
    cmd = [flower_executable("flwr"), *args, *(["--format", "json"] if json_out else [])]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=env.get("FLWR_HOME"))
    out = proc.stdout.strip()
    start = out.find("{")
    try:
        data = json.loads(out[start:]) if start >= 0 else {}
    except json.JSONDecodeError:
        data = {}
    if proc.returncode != 0 or data.get("success") is False:
        reason = data.get("error-message") or (proc.stderr.strip() or out)[-800:]
        raise CoordinatorError(f"`flwr {' '.join(args[:2])}` failed: {reason}")
    return data


def run_details(run_id: int, env: dict[str, str]) -> dict:
    """``flwr ls`` of one run: status, traffic, compute time; empty when unknown."""
    runs = flwr(["ls", CONNECTION, "--run-id", str(run_id)], env).get("runs", [])
    return runs[0] if runs else {}


def run_status(run_id: int, env: dict[str, str]) -> str:
    """Flower's status of the run, e.g. ``finished:completed``; ``unknown`` if none."""
    return str(run_details(run_id, env).get("status", "unknown"))
