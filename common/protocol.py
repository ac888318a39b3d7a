"""What travels between the coordinator and a site, and how it is encoded in Flower records.

Only model weights, aggregate statistics and metrics cross a site boundary:

* ``describe`` (a Flower *query*): the site's feature schema (names, not values), its
  training class counts, and per-modality feature sums / sums of squares / counts over
  at least ``MIN_PATIENTS_FOR_STATS`` patients.
* ``train``: global weights plus a round config (standardizer, class weights, schedule
  position, local epochs, FedProx mu) -> updated weights, training metrics, and the
  validation metrics (below) of the global weights received.
* ``evaluate``: global weights plus the round config -> validation loss sum and
  confusion-matrix counts, which the server adds up into pooled validation metrics.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from common.preprocessing import FeatureStats, Standardizer
from common.schema import FeatureSchema

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
SITE = "site"
STATS = "stats"
NUM_EXAMPLES = "num-examples"  # Flower strategies weight updates by this key
VAL_EXAMPLES = "val-examples"  # validation patients behind a reply's loss sum and confusion
QUERY_KIND = "query"
DESCRIBE = "describe"


@dataclass
class RoundConfig:
    """Settings the server sends with every train/evaluate message."""

    schema: FeatureSchema
    standardizer: Standardizer
    class_weight: np.ndarray
    local_epochs: int = 1
    progress_start: float = 0.0
    progress_end: float = 1.0
    proximal_mu: float = 0.0
    server_round: int = 0

    def to_record(self) -> ConfigRecord:
        rec: dict = {
            "schema": json.dumps(self.schema.to_dict()),
            "class-weight": [float(w) for w in self.class_weight],
            "local-epochs": int(self.local_epochs),
            "progress-start": float(self.progress_start),
            "progress-end": float(self.progress_end),
            "proximal-mu": float(self.proximal_mu),
        }
        for key, arr in self.standardizer.to_arrays().items():
            rec[f"standardizer.{key}"] = [float(v) for v in arr]
        return ConfigRecord(rec)

    @classmethod
    def from_record(cls, rec: ConfigRecord) -> RoundConfig:
        arrays = {
            k.removeprefix("standardizer."): np.asarray(v, dtype=np.float32)
            for k, v in rec.items()
            if k.startswith("standardizer.")
        }
        return cls(
            schema=FeatureSchema.from_dict(json.loads(str(rec["schema"]))),
            standardizer=Standardizer.from_arrays(arrays),
            class_weight=np.asarray(rec["class-weight"], dtype=np.float32),
            local_epochs=int(rec.get("local-epochs", 1)),
            progress_start=float(rec.get("progress-start", 0.0)),
            progress_end=float(rec.get("progress-end", 1.0)),
            # FedProx puts its mu under this key itself (flwr FedProx.configure_train).
            proximal_mu=float(rec.get("proximal-mu", 0.0)),
            server_round=int(rec.get("server-round", 0)),
        )


@dataclass
class SiteDescription:
    """A site's answer to ``describe``."""

    site: str
    schema: FeatureSchema
    n_train: int
    n_val: int
    class_counts: np.ndarray
    stats: FeatureStats

    def to_record(self) -> RecordDict:
        arrays = {}
        for m in self.stats.count:
            arrays[f"sum/{m}"] = self.stats.total[m]
            arrays[f"sumsq/{m}"] = self.stats.total_sq[m]
        counts = {f"count/{m}": int(c) for m, c in self.stats.count.items()}
        return RecordDict({
            STATS: ArrayRecord({k: to_array(v, np.float64) for k, v in arrays.items()}),
            METRICS: MetricRecord({
                "n-train": self.n_train, "n-val": self.n_val,
                "class-counts": [int(c) for c in self.class_counts], **counts,
            }),
            SITE: ConfigRecord({"name": self.site, "schema": json.dumps(self.schema.to_dict())}),
        })

    @classmethod
    def from_record(cls, content: RecordDict) -> SiteDescription:
        metrics = content[METRICS]
        site = content[SITE]
        arrays = {k: v.numpy() for k, v in content[STATS].items()}
        modalities = [k.removeprefix("count/") for k in metrics if k.startswith("count/")]
        stats = FeatureStats(
            count={m: int(metrics[f"count/{m}"]) for m in modalities},
            total={m: arrays[f"sum/{m}"] for m in modalities},
            total_sq={m: arrays[f"sumsq/{m}"] for m in modalities},
        )
        return cls(
            site=str(site["name"]),
            schema=FeatureSchema.from_dict(json.loads(str(site["schema"]))),
            n_train=int(metrics["n-train"]),
            n_val=int(metrics["n-val"]),
            class_counts=np.asarray(metrics["class-counts"], dtype=np.int64),
            stats=stats,
        )


def to_array(values: np.ndarray, dtype: np.dtype | type | None = None) -> Array:
    """A numpy array as a Flower ``Array`` (contiguous; ``dtype`` converts when given)."""
    return Array(np.ascontiguousarray(values, dtype=dtype))


def site_record(name: str) -> ConfigRecord:
    return ConfigRecord({"name": name})


def site_name(content: RecordDict, default: str = "?") -> str:
    rec = content.get(SITE)
    return str(rec["name"]) if rec is not None and "name" in rec else default


REFUSED = "refused"


def refusal(name: str, reason: str) -> RecordDict:
    """A site's answer when it declines a round (e.g. its privacy budget would run out)."""
    return RecordDict({
        METRICS: MetricRecord({REFUSED: 1, NUM_EXAMPLES: 0}),
        SITE: ConfigRecord({"name": name, "refusal": reason}),
    })


def refusal_reason(content: RecordDict) -> str | None:
    """The reason a reply declines the round, or None for an ordinary reply."""
    metrics = content.get(METRICS)
    if metrics is None or not metrics.get(REFUSED):
        return None
    site = content.get(SITE)
    return str(site["refusal"]) if site is not None and "refusal" in site else "refused"
