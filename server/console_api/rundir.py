"""What a run directory (``STATE_DIR/runs/<name>``) says, in the console's terms: its
config, its completed rounds as :data:`Round` objects, rejections, errors, the sites'
declared data, and how a run the service did not start ended."""

from __future__ import annotations

import contextlib
import json
import math
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from server.coordinator.progress import METRICS_FILE, completed_rounds, participated
from server.coordinator.settings import RECORD_FILE, RUN_CONFIG_FILE

_ERROR_LINES = 20  # of coordinator.log, newest


def run_config(run_dir: Path) -> dict[str, Any]:
    """The run's flat Flower run config as submitted first; empty when unreadable."""
    with contextlib.suppress(OSError, tomllib.TOMLDecodeError):
        return tomllib.loads((run_dir / RUN_CONFIG_FILE).read_text())
    return {}


def rounds_total(config: dict[str, Any]) -> int:
    from common.config import RunConfig

    try:
        return RunConfig.from_flower({k: v for k, v in config.items() if k != "out"}).rounds
    except (ValueError, TypeError):
        return int(config.get("rounds") or 0)


def epsilon_budget(config: dict[str, Any]) -> float | None:
    """Each site's epsilon budget in a DP run (the run's target epsilon); None without DP."""
    if config.get("dp", "none") in ("none", "central"):
        return None
    eps = config.get("epsilon")
    return float(eps) if isinstance(eps, int | float) and math.isfinite(eps) else None


def metrics(run_dir: Path) -> dict | None:
    """``metrics.json`` of a finished run."""
    with contextlib.suppress(OSError, ValueError):
        return json.loads((run_dir / METRICS_FILE).read_text())
    return None


def record(run_dir: Path) -> dict:
    """The coordinator's record of the run (``coordinator.json``)."""
    with contextlib.suppress(OSError, ValueError):
        return json.loads((run_dir / RECORD_FILE).read_text())
    return {}


def round_view(rec: dict, site_names: list[str], budget: float | None) -> dict[str, Any]:
    """One round record as the console's ``Round``; every site of the run is listed,
    ``participated`` when its update was aggregated."""
    val = rec.get("val") or {}
    loss = val.get("loss", (rec.get("train") or {}).get("loss"))
    by_site = {s.get("site"): s for s in rec.get("sites", [])}
    sites = []
    for name in sorted(set(site_names) | {n for n in by_site if n}):
        s = by_site.get(name, {})
        sites.append({"name": name, "participated": participated(s),
                      "epsilon_spent": _finite(s.get("epsilon")), "epsilon_budget": budget})
    return {"round": rec["round"],
            "metrics": {"f1_macro": _finite(val.get("f1_macro")),
                        "accuracy": _finite(val.get("accuracy")), "loss": _finite(loss)},
            "sites": sites, "failed": bool(rec.get("failed")),
            "seconds": _finite(rec.get("seconds"))}


def rounds(run_dir: Path, config: dict[str, Any]) -> list[dict[str, Any]]:
    """The completed rounds as ``Round`` objects."""
    records = completed_rounds(run_dir)
    names = sorted({s["site"] for r in records for s in r.get("sites", []) if "site" in s}
                   | {s["site"] for r in records for s in r.get("rejected", []) if "site" in s})
    return [round_view(r, names, epsilon_budget(config)) for r in records]


def rejections(run_dir: Path) -> list[dict[str, Any]]:
    return [{"round": r["round"], "site": str(x.get("site", "?")),
             "reason": str(x.get("reason", ""))}
            for r in completed_rounds(run_dir) for x in r.get("rejected", [])]


def errors(run_dir: Path) -> list[str]:
    """Flower runs that did not complete, and the error lines of the run's log."""
    out = [f"Flower run {e['finished']} ended {e['status']}"
           for e in record(run_dir).get("events", [])
           if "finished" in e and e.get("status") != "finished:completed"]
    with contextlib.suppress(OSError):
        lines = (run_dir / "coordinator.log").read_text(errors="replace").splitlines()
        out += [line.strip() for line in lines if "ERROR" in line][-_ERROR_LINES:]
    return out


def best_f1(round_views: list[dict[str, Any]]) -> float | None:
    scores = [r["metrics"]["f1_macro"] for r in round_views
              if r["metrics"]["f1_macro"] is not None]
    return max(scores) if scores else None


def data_summaries(run_dir: Path) -> dict[str, dict]:
    """What each site declared when the consortium formed (patients, class counts)."""
    found = metrics(run_dir) or {}
    return {s["site"]: {k: v for k, v in s.items() if k in ("n_train", "n_val", "class_counts")}
            for s in found.get("sites") or [] if isinstance(s, dict) and "site" in s}


def ended(run_dir: Path) -> tuple[str, str | None]:
    """Status and end time of a run from its files alone (a run found on disk)."""
    done = run_dir / METRICS_FILE
    if done.exists():
        return "finished", _mtime(done)
    events = record(run_dir).get("events", [])
    last = next((e for e in reversed(events) if "finished" in e), None)
    if last is None:
        return "stopped", None  # interrupted: resumable from its checkpoint
    when = datetime.fromtimestamp(last["time"], UTC).isoformat(timespec="seconds")
    return ("stopped" if "stopped" in str(last.get("status")) else "failed"), when


def started(run_dir: Path) -> str:
    events = record(run_dir).get("events", [])
    if events and isinstance(events[0].get("time"), int | float):
        return datetime.fromtimestamp(events[0]["time"], UTC).isoformat(timespec="seconds")
    return _mtime(run_dir)


def _mtime(path: Path) -> str:
    return datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat(timespec="seconds")


def _finite(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None
