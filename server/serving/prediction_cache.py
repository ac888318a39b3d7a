"""An in-process LRU of class probabilities, keyed by model id and a hash of the input.

The key is the served model's id and the SHA-256 of the validated, standardized input
(the float32 values and the modality mask, exactly what the network sees), so two
requests that differ only in patient ids, field order or number formatting share an
entry, and no patient value appears in a key. Entries of another model never match;
:meth:`PredictionCache.clear` empties the cache when the registry's production model
changes. A hit still goes through the micro-batcher, so every prediction keeps its audit
record; only the forward pass is skipped.

Each serving worker process holds its own LRU (``prediction_cache_size`` entries of one
patient each); with ``prediction_cache_redis_url`` set, :class:`RedisPredictionCache`
shares one cache between workers and replicas instead. Hits and misses go to Prometheus.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from typing import Any, Generic, TypeVar

import numpy as np

logger = logging.getLogger(__name__)

V = TypeVar("V")


class LruCache(Generic[V]):
    """Thread-safe LRU of at most ``max_entries`` values by string key, counting hits
    and misses."""

    def __init__(self, max_entries: int, what: str = "cache") -> None:
        if max_entries < 1:
            raise ValueError(f"{what} needs at least one entry, got {max_entries}")
        self.max_entries = max_entries
        self._entries: OrderedDict[str, V] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> V | None:
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return found

    def put(self, key: str, value: V) -> None:
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget every entry (the production model changed)."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class PredictionCache(LruCache[np.ndarray]):
    """``key(model_id, x, mask)`` -> one patient's probabilities."""

    def __init__(self, max_entries: int) -> None:
        super().__init__(max_entries, "a prediction cache")

    @staticmethod
    def key(model_id: str, x: np.ndarray, mask: np.ndarray) -> str:
        """One patient's key: the model id and a digest of its standardized row."""
        digest = hashlib.sha256()
        digest.update(np.ascontiguousarray(x, dtype=np.float32).tobytes())
        digest.update(np.ascontiguousarray(mask, dtype=bool).tobytes())
        return f"{model_id}:{digest.hexdigest()}"

    def put(self, key: str, proba: np.ndarray) -> None:
        row = np.array(proba, dtype=np.float32, copy=True)
        row.setflags(write=False)  # shared between requests
        super().put(key, row)


class RedisPredictionCache:
    """The same interface backed by Redis, shared by every worker that names the server.

    Keys are :meth:`PredictionCache.key` under a namespace, so :meth:`clear` (a promotion)
    removes only this service's entries. Redis being unreachable never fails a request:
    a lookup counts as a miss, a store is dropped, and the service computes as without a
    cache until Redis answers again (one warning per ``warn_every_s``).
    """

    key = staticmethod(PredictionCache.key)

    def __init__(self, url: str, namespace: str = "cancer-alpha:prediction",
                 timeout_s: float = 0.05, warn_every_s: float = 30.0) -> None:
        import redis  # imported only by a service that names a Redis server

        self.url = url
        self.namespace = namespace
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._client: Any = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._warn_every_s = warn_every_s
        self._last_warning = float("-inf")
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.errors = 0

    def _name(self, key: str) -> str:
        return f"{self.namespace}:{key}"

    def _failed(self, action: str, exc: BaseException) -> None:
        with self._lock:
            self.errors += 1
            now = time.monotonic()
            if now - self._last_warning < self._warn_every_s:
                return
            self._last_warning = now
        logger.warning("prediction cache at %s unavailable (%s: %s); computing without it",
                       _redacted(self.url), action, exc)

    def get(self, key: str) -> np.ndarray | None:
        try:
            raw = self._client.get(self._name(key))
        except self._errors as exc:
            self._failed("get", exc)
            raw = None
        with self._lock:
            if raw is None:
                self.misses += 1
                return None
            self.hits += 1
        row = np.frombuffer(raw, dtype=np.float32)  # read-only view: shared safely
        return row

    def put(self, key: str, proba: np.ndarray) -> None:
        try:
            self._client.set(self._name(key), np.asarray(proba, dtype=np.float32).tobytes())
        except self._errors as exc:
            self._failed("set", exc)

    def clear(self) -> None:
        """Delete this service's entries (the production model changed)."""
        try:
            batch = []
            for name in self._client.scan_iter(match=f"{self.namespace}:*", count=1000):
                batch.append(name)
                if len(batch) >= 1000:
                    self._client.delete(*batch)
                    batch.clear()
            if batch:
                self._client.delete(*batch)
        except self._errors as exc:
            # Stale entries stay harmless: their keys name the previous model's id.
            self._failed("clear", exc)

    def __len__(self) -> int:
        try:
            return sum(1 for _ in self._client.scan_iter(match=f"{self.namespace}:*",
                                                         count=1000))
        except self._errors as exc:
            self._failed("len", exc)
            return 0


def open_prediction_cache(enabled: bool, size: int,
                          redis_url: str = "") -> PredictionCache | RedisPredictionCache | None:
    """The configured cache: Redis when a URL is set, an in-process LRU otherwise."""
    if not enabled:
        return None
    if redis_url:
        return RedisPredictionCache(redis_url)
    return PredictionCache(size)


def _redacted(url: str) -> str:
    """The URL without a password (``redis://:secret@host`` -> ``redis://:***@host``)."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at:
        return url
    user = creds.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"
