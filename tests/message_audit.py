"""What virtual hospitals send: a ClientApp mod that records every reply of a simulation.

Used by the privacy tests, which check that a DP run sends no per-site value in clear.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from common.config import RunConfig


class MessageAudit:
    """A ClientApp mod writing a summary of every reply a site sends to ``directory``:
    its message type, sending site, each record's kind and values (scalars as they are,
    an array record's length), its metrics, and the leading values of its arrays."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def __call__(self, msg, context, call_next):
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        summary = {"type": msg.metadata.message_type, "records": {}, "metrics": {},
                   "arrays": []}
        for name, record in reply.content.items():
            kind = type(record).__name__
            if kind == "ArrayRecord":
                summary["arrays"] += [a.numpy().ravel()[:64].tolist() for a in record.values()]
                values = len(record)
            else:
                values = {k: (v if isinstance(v, int | float | str) else f"<{type(v).__name__}>")
                          for k, v in record.items()}
            if kind == "MetricRecord":
                summary["metrics"].update({k: v for k, v in record.items()
                                           if isinstance(v, int | float)})
            if name == "site":
                summary["site"] = str(record["name"])
            summary["records"][name] = {"kind": kind, "values": values}
        with open(self.directory / f"{os.getpid()}.jsonl", "a") as fh:
            fh.write(json.dumps(summary, default=str) + "\n")
        return reply


def audited_simulation(cfg: RunConfig, audit_dir: Path) -> tuple[Path, list[dict]]:
    """Run ``cfg`` on the simulation engine; its run directory and every reply sent."""
    from simulations.runner import simulate

    run_dir = simulate(cfg, compare=False, show_progress=False,
                       client_mods=[MessageAudit(audit_dir)])
    messages = [json.loads(line) for f in sorted(audit_dir.glob("*.jsonl"))
                for line in f.read_text().splitlines()]
    return run_dir, messages
