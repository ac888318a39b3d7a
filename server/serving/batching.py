"""Dynamic batching: concurrent prediction requests of one worker share a forward pass
and an audit transaction.

Requests are validated and encoded on the event loop, then queued. One inference
thread takes everything queued (up to ``max_rows`` patients), runs one forward pass,
appends one audit record per request in one transaction, and hands each request its
rows. Nothing waits for a batch to fill: a lone request goes straight through, and
under load requests that arrive during a forward pass form the next batch. A request
gets its answer only after its audit record has committed (if the audit write fails,
every request of the batch fails with it).

Per-request costs that batching removes under load: one thread hand-off and one
database transaction per request; a forward pass over 16 patients costs about half as
much per patient as 16 passes over one.

With a :class:`~server.serving.prediction_cache.PredictionCache`, patients seen before
(same model, same standardized input) take their probabilities from the cache; only the
others go through the forward pass. Every request is still audited.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from server.serving.audit_log import AuditLog, Entry
from server.serving.prediction_cache import PredictionCache, RedisPredictionCache
from server.serving.predictor import Predictor


@dataclass
class _Job:
    x: np.ndarray
    mask: np.ndarray
    entry: Entry
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    keys: list[str] | None = None  # per patient, when caching
    cached: list[np.ndarray | None] | None = None  # per patient, the cache's answer

    def missing(self) -> list[int]:
        """Rows that need the forward pass."""
        if self.cached is None:
            return list(range(len(self.x)))
        return [i for i, row in enumerate(self.cached) if row is None]


class MicroBatcher:
    """Coalesces concurrent ``run`` calls into shared forward passes (one per worker)."""

    def __init__(self, predictor: Predictor, audit: AuditLog, max_rows: int = 256, *,
                 cache: PredictionCache | RedisPredictionCache | None = None,
                 on_cache_lookup: Callable[[int, int], object] | None = None) -> None:
        """``on_cache_lookup(hits, misses)`` is told each request's cache lookups."""
        self.predictor = predictor
        self.audit = audit
        self.max_rows = max_rows
        self.cache = cache
        self.on_cache_lookup = on_cache_lookup
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="inference")
        self._lock = threading.Lock()
        self._queue: deque[_Job] = deque()
        self._draining = False
        self.batches = 0  # forward passes run (for tests and debugging)

    async def run(self, x: np.ndarray, mask: np.ndarray, entry: Entry) -> np.ndarray:
        """Probabilities for ``x``/``mask`` (standardized), after ``entry`` is audited."""
        loop = asyncio.get_running_loop()
        job = _Job(x, mask, entry, loop, loop.create_future())
        if self.cache is not None:
            model_id = self.predictor.identity.model_id
            job.keys = [self.cache.key(model_id, x[i], mask[i]) for i in range(len(x))]
            job.cached = [self.cache.get(k) for k in job.keys]
            if self.on_cache_lookup is not None:
                hits = sum(row is not None for row in job.cached)
                self.on_cache_lookup(hits, len(job.cached) - hits)
        return await self._submit(job)

    async def record(self, entry: Entry) -> None:
        """Audit ``entry`` (a call answered elsewhere, e.g. an explanation) in the
        transaction of the next batch; returns once it has committed."""
        loop = asyncio.get_running_loop()
        n_features, n_modalities = self.predictor.n_features, len(self.predictor.modalities)
        await self._submit(_Job(np.empty((0, n_features), dtype=np.float32),
                                np.empty((0, n_modalities), dtype=bool), entry, loop,
                                loop.create_future()))

    async def _submit(self, job: _Job) -> np.ndarray:
        with self._lock:
            self._queue.append(job)
            start = not self._draining
            self._draining = True
        if start:
            self._executor.submit(self._drain)
        return await job.future

    def close(self) -> None:
        """Finish queued work and stop the inference thread."""
        self._executor.shutdown(wait=True)

    def _take(self) -> list[_Job]:
        batch: list[_Job] = []
        rows = 0
        while self._queue and (not batch or rows + len(self._queue[0].x) <= self.max_rows):
            job = self._queue.popleft()
            batch.append(job)
            rows += len(job.x)
        return batch

    def _drain(self) -> None:
        while True:
            with self._lock:
                batch = self._take()
                if not batch:
                    self._draining = False
                    return
            try:
                answers = self._answer(batch)
                self.audit.append_many([j.entry for j in batch])
            except Exception as exc:
                for job in batch:
                    job.loop.call_soon_threadsafe(_deliver, job.future, None, exc)
                continue
            for job, proba in zip(batch, answers, strict=True):
                job.loop.call_soon_threadsafe(_deliver, job.future, proba, None)

    def _answer(self, batch: list[_Job]) -> list[np.ndarray]:
        """Each job's probabilities: one forward pass over every row the cache lacks."""
        if self.cache is None and len(batch) == 1 and len(batch[0].x):  # no copying
            self.batches += 1
            return [self.predictor.forward(batch[0].x, batch[0].mask)]
        todo = [(job, job.missing()) for job in batch]
        x = [job.x[rows] for job, rows in todo if rows]
        proba = None
        if x:
            mask = [job.mask[rows] for job, rows in todo if rows]
            proba = self.predictor.forward(np.concatenate(x), np.concatenate(mask))
            self.batches += 1
        out, start = [], 0
        n_classes = len(self.predictor.label_names)
        for job, rows in todo:
            if not len(job.x):  # an audit record only
                out.append(np.empty((0, n_classes), dtype=np.float32))
                continue
            if job.cached is None:  # no cache: every row came from the forward pass
                out.append(proba[start:start + len(rows)])
                start += len(rows)
                continue
            answer = np.empty((len(job.x), n_classes), dtype=np.float32)
            for i, row in enumerate(job.cached):
                if row is not None:
                    answer[i] = row
            for i in rows:
                answer[i] = proba[start]
                if np.isfinite(proba[start]).all():  # a failed row is never remembered
                    self.cache.put(job.keys[i], proba[start])
                start += 1
            out.append(answer)
        return out


def _deliver(future: asyncio.Future, result: np.ndarray | None,
             exc: BaseException | None) -> None:
    if future.done():  # the client went away and the request was cancelled
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
