"""Prometheus metrics of the coordinator's round loop.

:class:`CoordinatorMetrics` turns the per-round records built by
:func:`server.rounds.run_federation` into counters, gauges and histograms. It owns
its own :class:`~prometheus_client.CollectorRegistry`, so several instances (tests, one
per simulated run) never collide with each other or with the default registry.

Two ways to expose them:

* In the process that runs the loop (simulation): :meth:`CoordinatorMetrics.start_http_server`.
* Under ``flower-superlink`` each run's ServerApp lives in its own short-lived
  ``flwr-serverapp`` process. The long-lived ``cancer-alpha coordinator start`` process
  calls :func:`serve_coordinator_metrics` on a directory and starts the SuperLink with
  ``PROMETHEUS_MULTIPROC_DIR`` set to it; every run's metrics are then written there
  (prometheus-client's multiprocess mode) and served, summed over runs, from one port.

Metric names are listed in :data:`METRIC_NAMES`; the Grafana dashboard uses only these.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from threading import Thread
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import start_http_server as _start_http_server
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
PREFIX = "cancer_alpha"

# Seconds: a round is local training at every site plus aggregation.
ROUND_BUCKETS = (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, float("inf"))
# Bytes of one site's model update: from a toy model to a few GB.
UPDATE_BUCKETS = (*(float(4**k * 1024) for k in range(1, 13)), float("inf"))

# Why an update was not aggregated; see strategies.guard.update_problem.
REJECTION_KINDS = ("declined", "site_error", "no_weights", "invalid_examples",
                   "shape_mismatch", "non_finite", "example_count", "norm_bound",
                   "direction", "no_training", "quarantined", "other")
# Kinds that are no fault of the site's update (it could not train, or never answered).
BENIGN_KINDS = ("declined", "site_error", "other")

METRIC_NAMES = {
    "run_info": "Current run: value is its start time (unix s); labels run_id, strategy, dp.",
    "runs_total": "Federations finished, by status (completed or failed).",
    "rounds_planned": "Rounds the current run is configured for.",
    "epsilon_budget": "Privacy budget epsilon of the current run (DP runs only).",
    "rounds_total": "Rounds reported, by outcome (completed or failed).",
    "round": "Number of the last round reported.",
    "participating_sites": "Sites whose update was aggregated in the last completed round.",
    "site_rounds_total": "Rounds in which a site's update was aggregated, by site.",
    "rejected_updates_total": "Updates not aggregated, by site and reason.",
    "round_duration_seconds": "Wall time of a round (training and aggregation).",
    "last_round_duration_seconds": "Wall time of the last completed round.",
    "update_size_bytes": "Size of a site's model update, by site.",
    "site_epsilon": "Local DP: a site's cumulative epsilon after its last round, by site.",
    "central_epsilon": "Central DP: epsilon spent by the released aggregates so far.",
    "train_loss": "Pooled training loss of the last completed round.",
    "val_loss": "Pooled validation loss of the last validated round.",
    "val_accuracy": "Pooled validation accuracy of the last validated round.",
    "val_f1_macro": "Pooled validation macro-F1 of the last validated round.",
}


def rejection_kind(reason: str) -> str:
    """A bounded label for a rejection reason string from the update guard."""
    if reason.startswith("site declined the round"):
        return "declined"
    if reason.startswith("site error"):
        return "site_error"
    if reason.startswith("site quarantined"):
        return "quarantined"
    if reason.startswith("declares "):
        return "example_count"
    if reason.startswith("update norm "):
        return "norm_bound"
    if reason.startswith("update direction "):
        return "direction"
    if "leaves the global model unchanged" in reason:
        return "no_training"
    if "no model weights" in reason:
        return "no_weights"
    if reason.startswith("invalid "):
        return "invalid_examples"
    if "expected" in reason or "parameter names" in reason:
        return "shape_mismatch"
    if "NaN or infinite" in reason:
        return "non_finite"
    return "other"


def rejections_by_site(rounds: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """Site -> rejection kind -> rounds, over a run's round records; declines, site
    errors and lost replies are left out (they are no fault of an update)."""
    counts: dict[str, dict[str, int]] = {}
    for record in rounds:
        for rej in record.get("rejected", ()):
            kind = rejection_kind(str(rej.get("reason", "")))
            if kind in BENIGN_KINDS or rej.get("site", "?") == "?":
                continue
            per_site = counts.setdefault(str(rej["site"]), {})
            per_site[kind] = per_site.get(kind, 0) + 1
    return counts


def update_sizes(replies: Iterable[Any]) -> dict[str, int]:
    """Bytes of model weights in each training reply, by site (error replies skipped)."""
    from common.protocol import site_name

    sizes: dict[str, int] = {}
    for msg in replies:
        if msg.has_error():
            continue
        total = sum(len(arr.data) for rec in msg.content.array_records.values()
                    for arr in rec.values())
        if total:
            name = site_name(msg.content)
            sizes[name] = sizes.get(name, 0) + total
    return sizes


class CoordinatorMetrics:
    """Counters, gauges and histograms of one coordinator, in their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r, p = self.registry, PREFIX

        def gauge(name: str, labels: tuple[str, ...] = ()) -> Gauge:
            # mostrecent: in multiprocess mode, the last value written by any run wins.
            return Gauge(f"{p}_{name}", METRIC_NAMES[name], labels, registry=r,
                         multiprocess_mode="mostrecent")

        def counter(name: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(f"{p}_{name}", METRIC_NAMES[name], labels, registry=r)

        self.run_info = gauge("run_info", ("run_id", "strategy", "dp"))
        self.runs = counter("runs_total", ("status",))
        self.rounds_planned = gauge("rounds_planned")
        self.epsilon_budget = gauge("epsilon_budget")
        self.rounds = counter("rounds_total", ("outcome",))
        self.round = gauge("round")
        self.participating_sites = gauge("participating_sites")
        self.site_rounds = counter("site_rounds_total", ("site",))
        self.rejected_updates = counter("rejected_updates_total", ("site", "reason"))
        self.round_duration = Histogram(f"{p}_round_duration_seconds",
                                        METRIC_NAMES["round_duration_seconds"], registry=r,
                                        buckets=ROUND_BUCKETS)
        self.last_round_duration = gauge("last_round_duration_seconds")
        self.update_size = Histogram(f"{p}_update_size_bytes", METRIC_NAMES["update_size_bytes"],
                                     ("site",), registry=r, buckets=UPDATE_BUCKETS)
        self.site_epsilon = gauge("site_epsilon", ("site",))
        self.central_epsilon = gauge("central_epsilon")
        self.train_loss = gauge("train_loss")
        self.val_loss = gauge("val_loss")
        self.val_accuracy = gauge("val_accuracy")
        self.val_f1_macro = gauge("val_f1_macro")

    def run_started(self, run_id: str, strategy: str, dp: str, rounds: int,
                    epsilon_budget: float | None = None) -> None:
        """Record the run's identity and plan; ``epsilon_budget`` only for DP runs."""
        self.run_info.labels(run_id=run_id, strategy=strategy, dp=dp).set(time.time())
        self.rounds_planned.set(rounds)
        if epsilon_budget is not None:
            self.epsilon_budget.set(epsilon_budget)

    def run_finished(self, ok: bool) -> None:
        """Count a federation that ended normally (``ok``) or with an error."""
        self.runs.labels(status="completed" if ok else "failed").inc()

    def round_completed(self, record: Mapping[str, Any]) -> None:
        """Update every metric from one round record of ``run_federation``.

        Reads ``round``, ``failed``, ``rejected`` (site, reason), ``seconds``,
        ``sites`` (site, n_train, epsilon), ``train.loss``, ``val``,
        ``central_epsilon`` and ``update_bytes`` (site -> bytes); all but ``round``
        are optional. A failed round only counts as failed and its rejections.
        """
        failed = bool(record.get("failed"))
        self.rounds.labels(outcome="failed" if failed else "completed").inc()
        self.round.set(int(record["round"]))
        for rej in record.get("rejected", ()):
            self.rejected_updates.labels(site=str(rej.get("site", "?")),
                                         reason=rejection_kind(str(rej.get("reason", "")))).inc()
        if failed:
            return
        if "seconds" in record:
            self.round_duration.observe(float(record["seconds"]))
            self.last_round_duration.set(float(record["seconds"]))
        from server.coordinator.progress import participated

        trained = [s for s in record.get("sites", ()) if participated(s)]
        self.participating_sites.set(len(trained))
        for site in trained:
            self.site_rounds.labels(site=site["site"]).inc()
            if "epsilon" in site:
                self.site_epsilon.labels(site=site["site"]).set(float(site["epsilon"]))
        for site, size in record.get("update_bytes", {}).items():
            self.update_size.labels(site=site).observe(float(size))
        if "central_epsilon" in record:
            self.central_epsilon.set(float(record["central_epsilon"]))
        if "loss" in record.get("train", {}):
            self.train_loss.set(float(record["train"]["loss"]))
        val = record.get("val")
        if val:
            self.val_loss.set(float(val["loss"]))
            self.val_accuracy.set(float(val["accuracy"]))
            self.val_f1_macro.set(float(val["f1_macro"]))

    def start_http_server(self, port: int, addr: str = "127.0.0.1") -> tuple[WSGIServer, Thread]:
        """Serve this registry at ``http://addr:port/metrics`` (port 0: any free port)."""
        return _start_http_server(port, addr=addr, registry=self.registry)


def prepare_metrics_dir(directory: Path) -> Path:
    """Create ``directory`` and delete the metric files a previous coordinator left."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
    return directory


def serve_coordinator_metrics(
    port: int, addr: str = "127.0.0.1", directory: Path | None = None
) -> tuple[WSGIServer, Thread]:
    """Serve, summed over processes, the metrics written to ``directory``.

    ``directory`` defaults to ``$PROMETHEUS_MULTIPROC_DIR``. Call once when the
    coordinator starts, then start ``flower-superlink`` with that variable in its
    environment so the ServerApp processes write there.
    """
    if directory is None:
        if not os.environ.get(MULTIPROC_ENV):
            raise ValueError(f"no metrics directory given and ${MULTIPROC_ENV} is not set")
        directory = Path(os.environ[MULTIPROC_ENV])
    prepare_metrics_dir(directory)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    return _start_http_server(port, addr=addr, registry=registry)
