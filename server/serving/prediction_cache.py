"""An in-process LRU of class probabilities, keyed by model id and a hash of the input.

The key is the served model's id and the SHA-256 of the validated, standardized input
(the float32 values and the modality mask, exactly what the network sees), so two
requests that differ only in patient ids, field order or number formatting share an
entry, and no patient value appears in a key. Entries of another model never match;
:meth:`PredictionCache.clear` empties the cache when the registry's production model
changes. A hit still goes through the micro-batcher, so every prediction keeps its audit
record; only the forward pass is skipped.

Each serving worker process holds its own cache (``prediction_cache_size`` entries of
one patient each); hits and misses go to Prometheus.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np


class PredictionCache:
    """Thread-safe LRU: ``key(model_id, x, mask)`` -> one patient's probabilities."""

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError(f"a prediction cache needs at least one entry, got {max_entries}")
        self.max_entries = max_entries
        self._entries: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(model_id: str, x: np.ndarray, mask: np.ndarray) -> str:
        """One patient's key: the model id and a digest of its standardized row."""
        digest = hashlib.sha256()
        digest.update(np.ascontiguousarray(x, dtype=np.float32).tobytes())
        digest.update(np.ascontiguousarray(mask, dtype=bool).tobytes())
        return f"{model_id}:{digest.hexdigest()}"

    def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return found

    def put(self, key: str, proba: np.ndarray) -> None:
        row = np.array(proba, dtype=np.float32, copy=True)
        row.setflags(write=False)  # shared between requests
        with self._lock:
            self._entries[key] = row
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget every entry (the production model changed)."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
