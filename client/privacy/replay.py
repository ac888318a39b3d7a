"""Released updates kept for replay: a repeated request never spends the budget twice.

A noised update is spent privacy the moment it leaves the site, whether or not the
coordinator lives to aggregate it, so its ledger charge is final at release. When a
coordinator restarts from its last checkpoint it asks again for rounds the sites had
already answered. Answering with a *fresh* noised update would be a second release of
the same data (a second charge); answering with the update already released is
post-processing of something the coordinator has seen, and costs nothing. So the site
keeps each release under a digest of the request (round config and received weights,
identical after a resume) in ``STATE_DIR/released/`` and sends the same vector again
for the same request.

Entries of a run (named by the key its coordinator draws and keeps in its checkpoint:
:mod:`common.spend_record`) are dropped once the run has
moved two rounds past them: a coordinator resumes at most one round before the round it
last asked for (its checkpoint lags one round behind).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.atomic import write_with_atomic

logger = logging.getLogger(__name__)

RELEASED_DIR = "released"
MAX_KEPT = 4  # a bound on the directory (releases can be model-sized), whatever the runs


@dataclass
class Released:
    """One release as it left the site: its vectors and what the site reported with it."""

    arrays: list[np.ndarray]
    meta: dict[str, Any]


def request_digest(run: str, round_config: Any, arrays: list[np.ndarray]) -> str:
    """SHA-256 of a request: its run, round config (a dataclass) and received arrays."""
    h = hashlib.sha256()
    config = dataclasses.asdict(round_config)
    h.update(json.dumps([run, config], sort_keys=True, default=str).encode())
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


class ReleaseStore:
    """The site's kept releases, one ``<digest>.npz`` file each."""

    def __init__(self, state_dir: Path) -> None:
        self.directory = Path(state_dir) / RELEASED_DIR

    def get(self, digest: str) -> Released | None:
        """The release answering request ``digest``, or None."""
        path = self.directory / f"{digest}.npz"
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                arrays = [data[f"a{i}"] for i in range(int(meta["count"]))]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError) as exc:
            logger.warning("kept release %s cannot be read (%s); releasing anew", path, exc)
            return None
        return Released(arrays, meta["report"])

    def put(self, digest: str, run: str, server_round: int, released: Released) -> None:
        """Keep ``released`` as the answer to request ``digest`` of round ``server_round``
        of run ``run``."""
        meta = {"count": len(released.arrays), "run": run, "round": int(server_round),
                "report": released.meta}
        arrays = {f"a{i}": np.asarray(a) for i, a in enumerate(released.arrays)}
        # Not fsynced: a release lost to a power cut is only released (and charged) anew;
        # the ledger, which must survive, is written durably.
        write_with_atomic(self.directory / f"{digest}.npz",
                          lambda fh: np.savez(fh, meta=np.array(json.dumps(meta)), **arrays),
                          private=True, durable=False)
        self.directory.chmod(0o700)

    def prune(self, run: str, server_round: int) -> None:
        """Drop releases of ``run`` before round ``server_round - 1`` (never asked again),
        and the oldest beyond :data:`MAX_KEPT`."""
        if not self.directory.is_dir():
            return
        files = sorted(self.directory.glob("*.npz"), key=lambda p: p.stat().st_mtime)
        for i, path in enumerate(files):
            meta = _meta(path)
            stale = meta is not None and meta["run"] == run and meta["round"] < server_round - 1
            if stale or i < len(files) - MAX_KEPT:
                path.unlink(missing_ok=True)


def _meta(path: Path) -> dict[str, Any] | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            return json.loads(str(data["meta"]))
    except (OSError, ValueError, KeyError):
        return None
