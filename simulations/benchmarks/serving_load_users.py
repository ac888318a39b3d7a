"""Locust users of the inference service: the scenario of ``serving_load``.

Each simulated user sends, with a think time of 1-3 s, a mix of single predictions
(weight 6), batches of 8 patients (weight 3) and explanations (weight 1, 16
integrated-gradients steps). Patients and the bearer token come from the files and
variables ``serving_load`` sets; every answer is checked for status 200 and its content.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from locust import FastHttpUser, between, task

BODIES_ENV = "CANCER_ALPHA_LOAD_BODIES"  # a JSON list of patients ({"modalities": ...})
TOKEN_ENV = "CANCER_ALPHA_LOAD_TOKEN"
BATCH_SIZE = 8
EXPLAIN_STEPS = 16

_PATIENTS: list[dict] = json.loads(Path(os.environ[BODIES_ENV]).read_text(encoding="utf-8"))
# Bodies encoded once: JSON-encoding 720 values per patient per request (~0.5 ms) would
# take CPU from the service, which shares the machine with the load generator.
_ENCODED: list[bytes] = [json.dumps(p).encode() for p in _PATIENTS]
_EXPLAIN_ENCODED: list[bytes] = [
    json.dumps({**p, "steps": EXPLAIN_STEPS, "top_k": 10}).encode() for p in _PATIENTS]


class ServiceUser(FastHttpUser):
    """One clinician's client: predicts mostly, sometimes a batch, rarely explains."""

    wait_time = between(1, 3)

    def on_start(self) -> None:
        self.headers = {"Authorization": f"Bearer {os.environ[TOKEN_ENV]}",
                        "Content-Type": "application/json"}
        self.rng = random.Random()

    def _post(self, path: str, body: bytes, want: str) -> None:
        with self.client.post(path, data=body, headers=self.headers,
                              catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"status {r.status_code}: {r.text[:200]}")
            elif want not in (r.json() or {}):
                r.failure(f"no {want!r} in the answer")
            else:
                r.success()

    @task(6)
    def predict(self) -> None:
        self._post("/v1/predict", self.rng.choice(_ENCODED), "prediction")

    @task(3)
    def predict_batch(self) -> None:
        chosen = self.rng.sample(_ENCODED, min(BATCH_SIZE, len(_ENCODED)))
        self._post("/v1/predict/batch", b'{"patients": [' + b", ".join(chosen) + b"]}",
                   "predictions")

    @task(1)
    def explain(self) -> None:
        self._post("/v1/explain", self.rng.choice(_EXPLAIN_ENCODED), "prediction")
