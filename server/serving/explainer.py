"""Explanations on the request path: an LRU of computed explanations, and one thread per
worker that computes the others.

An explanation is a deterministic function of the served model, the standardized input
the network sees (values and modality mask), the requested class, the number of
integrated-gradients steps and ``top_k``; the same patient explained again is answered
from the cache. The key is the prediction cache's (model id and SHA-256 of the input,
no patient value) plus those parameters. Entries hold attributions and probabilities
only: the raw values shown beside the top features are taken from each request itself.

Explanations run one at a time on their own thread: concurrent ones would fight each
other and the event loop for the interpreter lock and both cores, and their latency
would grow for everyone. Under load the queue of misses is short because repeated
patients are hits.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np

from server.serving.explain import Explanation, explain
from server.serving.prediction_cache import LruCache, PredictionCache
from server.serving.predictor import Predictor

DEFAULT_ENTRIES = 2048  # explanations kept per worker (a few kB each)


@dataclass(frozen=True)
class Explained:
    """One computed answer: the patient's class probabilities and the explanation."""

    proba: np.ndarray  # [1, C]
    explanation: Explanation  # top features' raw values are NaN: filled per request
    columns: tuple[int, ...]  # input column of each top feature


class ExplanationCache(LruCache[Explained]):
    """:class:`Explained` answers by model, input digest and parameters."""

    def __init__(self, max_entries: int = DEFAULT_ENTRIES) -> None:
        super().__init__(max_entries, "an explanation cache")

    @staticmethod
    def key(model_id: str, x: np.ndarray, mask: np.ndarray, target: str | None, steps: int,
            top_k: int) -> str:
        """The prediction cache's key of the patient plus what is asked of it."""
        # repr: a class name with a colon in it still cannot collide with another tuple
        return f"{PredictionCache.key(model_id, x, mask)}:{(target, steps, top_k)!r}"


class Explainer:
    """Answers explanation requests of one worker: from the cache, else on its thread."""

    def __init__(self, predictor: Predictor, cache: ExplanationCache | None = None) -> None:
        self.predictor = predictor
        self.cache = cache
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="explain")

    async def explain(self, raw: np.ndarray, x: np.ndarray, mask: np.ndarray, *,
                      target: str | None, steps: int, top_k: int) -> tuple[np.ndarray,
                                                                             Explanation]:
        """Probabilities ``[1, C]`` and the explanation of one encoded patient;
        ``target`` is a class name, or None for the predicted class."""
        key = None
        if self.cache is not None:
            key = self.cache.key(self.predictor.identity.model_id, x, mask, target, steps,
                                 top_k)
            found = self.cache.get(key)
            if found is not None:
                return found.proba, _with_values(found, raw)
        loop = asyncio.get_running_loop()
        done = await loop.run_in_executor(self._executor, self._compute, x, mask, target,
                                          steps, top_k)
        if key is not None and np.isfinite(done.proba).all():
            self.cache.put(key, done)
        return done.proba, _with_values(done, raw)

    def close(self) -> None:
        """Finish the explanation being computed and stop the thread."""
        self._executor.shutdown(wait=True)

    def _compute(self, x: np.ndarray, mask: np.ndarray, target: str | None, steps: int,
                 top_k: int) -> Explained:
        predictor = self.predictor
        proba = predictor.forward(x, mask)
        if not np.isfinite(proba).all():  # answered as an input error by the caller
            return Explained(proba, _EMPTY, ())
        k = (predictor.label_names.index(target) if target is not None
             else int(np.argmax(proba[0])))
        exp = explain(predictor, x, mask, np.full_like(x, np.nan), target=k, steps=steps,
                      top_k=top_k)
        columns = tuple(_column(predictor, f.modality, f.feature) for f in exp.top_features)
        return Explained(proba, exp, columns)


def _column(predictor: Predictor, modality: str, feature: str) -> int:
    """Column of a named feature in the concatenated input."""
    start = predictor.slice_of(predictor.modalities.index(modality)).start
    return start + list(predictor.features[modality]).index(feature)


def _with_values(found: Explained, raw: np.ndarray) -> Explanation:
    """The cached explanation with this request's raw values beside its top features."""
    exp = found.explanation
    if not exp.top_features:
        return exp
    return replace(exp, top_features=[replace(f, value=float(raw[0, col]))
                                      for f, col in zip(exp.top_features, found.columns,
                                                        strict=True)])


_EMPTY = Explanation(target="", target_probability=float("nan"),
                     baseline_probability=float("nan"), convergence_delta=float("nan"),
                     steps=0, modalities=[], top_features=[], learned_modality_weights={},
                     completeness_gap=float("nan"), attention=None, attention_check=None)
