"""The coordinator's record of a run (``runs/<name>/coordinator.json``): every Flower
run submitted for it and what happened, appended event by event."""

from __future__ import annotations

import json
import time
from typing import Any

from common.atomic import write_json_atomic
from server.coordinator.settings import RECORD_FILE, CoordinatorConfig


def read_record(cfg: CoordinatorConfig) -> dict:
    """The run's record; empty before its first submission."""
    path = cfg.run_dir / RECORD_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def append_record(cfg: CoordinatorConfig, **event: Any) -> None:
    """Add one timestamped event; a ``run_id`` also joins the list of Flower runs."""
    record = read_record(cfg)
    if "run_id" in event:
        record.setdefault("flower_runs", []).append(event["run_id"])
    record.setdefault("events", []).append({"time": time.time(), **event})
    write_json_atomic(cfg.run_dir / RECORD_FILE, record)
