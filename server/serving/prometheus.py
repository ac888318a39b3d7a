"""Prometheus metrics of the service, in a registry of its own.

With several uvicorn workers each process counts for itself; ``cancer-alpha serve``
then sets ``PROMETHEUS_MULTIPROC_DIR`` before the workers start, the counters live in
shared files, and ``/metrics`` aggregates every worker (prometheus-client's
multiprocess mode). Route labels are route templates, never raw paths, so label
cardinality stays bounded.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Request latency buckets (seconds): fine below 50 ms, where this service lives.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
                   0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServingMetrics:
    """Request counts and latencies, predictions per class, errors by kind."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "cancer_alpha_http_requests_total", "HTTP requests by route, method and status",
            ["route", "method", "status"], registry=r)
        self.latency = Histogram(
            "cancer_alpha_http_request_duration_seconds", "HTTP request latency by route",
            ["route", "method"], buckets=LATENCY_BUCKETS, registry=r)
        self.predictions = Counter(
            "cancer_alpha_predictions_total", "Patients predicted, by predicted class and model",
            ["label", "model_id"], registry=r)
        self.errors = Counter(
            "cancer_alpha_errors_total",
            "Failed requests by kind (auth, forbidden, validation, too_large, not_found, "
            "unavailable, internal)", ["route", "kind"], registry=r)
        self.cache_lookups = Counter(
            "cancer_alpha_prediction_cache_lookups_total",
            "Patients looked up in the prediction cache, by result (hit, miss)", ["result"],
            registry=r)
        self.model_info = Gauge(
            "cancer_alpha_model_info", "The served model (value 1)", ["model_id", "stage"],
            registry=r, multiprocess_mode="max")

    def count_cache_lookups(self, hits: int, misses: int) -> None:
        if hits:
            self.cache_lookups.labels("hit").inc(hits)
        if misses:
            self.cache_lookups.labels("miss").inc(misses)

    def render(self) -> tuple[bytes, str]:
        """Exposition text for ``/metrics`` (all workers' when in multiprocess mode)."""
        if os.environ.get(MULTIPROC_ENV):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def error_kind(status: int) -> str | None:
    """The ``errors_total`` kind of an HTTP status, or None for a success."""
    if status < 400:
        return None
    return {401: "auth", 403: "forbidden", 404: "not_found", 405: "not_found",
            413: "too_large", 422: "validation", 503: "unavailable"}.get(status,
                                                      "internal" if status >= 500 else "client")
