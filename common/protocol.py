"""What travels between the coordinator and a site, and how it is encoded in Flower records.

Only model weights, aggregate statistics and metrics cross a site boundary:

* ``describe`` (a Flower *query*): the site's feature schema (names, not values), its
  training class counts, and per-modality feature sums / sums of squares / counts over
  at least ``MIN_PATIENTS_FOR_STATS`` patients.
* ``setup`` (a query, once per run): the consortium schema, standardizer and class
  weights (:mod:`common.consortium_setup`), kept by the site for the run.
* ``train``: global weights plus a round config (setup digest, schedule position, local
  epochs, FedProx mu) -> updated weights, training metrics, and the validation metrics
  (below) of the global weights received.
* ``evaluate``: global weights plus the round config -> validation loss sum and
  confusion-matrix counts, which the server adds up into pooled validation metrics.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from common.distributed_dp import NoisePlan
from common.preprocessing import FeatureStats
from common.schema import FeatureSchema

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
SITE = "site"
STATS = "stats"
QUERY_KIND = "query"
DESCRIBE = "describe"

# Metric keys of a site's reply (see SiteMetrics) and of the pooled validation record.
NUM_EXAMPLES = "num-examples"  # Flower strategies weight updates by this key
VAL_EXAMPLES = "val-examples"  # validation patients behind a reply's loss sum and confusion
TRAIN_LOSS = "train-loss"
VAL_LOSS_SUM = "val-loss-sum"
CONFUSION = "confusion"  # flattened C x C counts, rows = true class
EPSILON = "epsilon"  # local DP: the site's cumulative spend after this round
NOISE_MULTIPLIER = "noise-multiplier"
DELTA = "delta"
REFUSED = "refused"
VAL_LOSS = "val-loss"
VAL_ACCURACY = "val-accuracy"
VAL_F1_MACRO = "val-f1-macro"
# Metric keys of a site's description.
N_TRAIN = "n-train"
N_VAL = "n-val"
CLASS_COUNTS = "class-counts"
# Round-config keys Flower's strategies set themselves (flwr FedAvg/FedProx.configure_train).
SERVER_ROUND = "server-round"
PROXIMAL_MU = "proximal-mu"
SETUP_DIGEST = "setup-digest"  # the consortium setup a round was planned with
TASK = "task"  # what a distributed-DP round asks a site to release (see RoundConfig)
_NOISE_PLAN = "dp."  # prefix of the noise plan's keys in a round config

# Tasks of a noised release (distributed DP through SecAgg+, local DP in clear).
TRAIN_TASK = "train"  # the clipped gradient sum (and the validation of the weights sent)
CLASS_COUNTS_TASK = "class-counts"  # the training class counts, once per run
VALIDATE_TASK = "validate"  # the validation confusion counts of the weights sent
# Local DP-SGD: the sum of the patients' unit vectors, once per run (the feature centre).
CENTRE_TASK = "feature-centre"


@dataclass
class RoundConfig:
    """Settings the server sends with every train/evaluate message.

    The schema, standardizer and class weights are sent once per run (see
    :mod:`common.consortium_setup`); a round names them by ``setup_digest``.
    """

    setup_digest: str = ""
    local_epochs: int = 1
    progress_start: float = 0.0
    progress_end: float = 1.0
    proximal_mu: float = 0.0
    server_round: int = 0
    task: str = TRAIN_TASK
    # Distributed DP: the noise of the run's releases; None in every other mode.
    noise_plan: NoisePlan | None = None

    def to_record(self) -> ConfigRecord:
        rec: dict[str, Any] = {
            SETUP_DIGEST: self.setup_digest,
            "local-epochs": int(self.local_epochs),
            "progress-start": float(self.progress_start),
            "progress-end": float(self.progress_end),
            PROXIMAL_MU: float(self.proximal_mu),
            TASK: self.task,
        }
        if self.noise_plan is not None:
            rec.update({_NOISE_PLAN + k: v for k, v in self.noise_plan.to_dict().items()})
        return ConfigRecord(rec)

    @classmethod
    def from_record(cls, rec: ConfigRecord) -> RoundConfig:
        return cls(
            setup_digest=str(rec.get(SETUP_DIGEST, "")),
            local_epochs=int(rec.get("local-epochs", 1)),
            progress_start=float(rec.get("progress-start", 0.0)),
            progress_end=float(rec.get("progress-end", 1.0)),
            # FedProx puts its mu under this key itself (flwr FedProx.configure_train).
            proximal_mu=float(rec.get(PROXIMAL_MU, 0.0)),
            server_round=int(rec.get(SERVER_ROUND, 0)),
            task=str(rec.get(TASK, TRAIN_TASK)),
            noise_plan=_noise_plan_of(rec),
        )


def _noise_plan_of(rec: ConfigRecord) -> NoisePlan | None:
    values = {k.removeprefix(_NOISE_PLAN): v for k, v in rec.items()
              if k.startswith(_NOISE_PLAN)}
    if not values:
        return None
    try:
        return NoisePlan(**values)  # type: ignore[arg-type]
    except TypeError as exc:
        raise ValueError(f"round config: malformed noise plan {sorted(values)}: {exc}") from exc


@dataclass
class SiteDescription:
    """A site's answer to ``describe``.

    Under distributed DP a site describes only its schema (feature and label names): its
    counts reach the coordinator as noised consortium sums, and no statistics are needed
    (each patient is standardized by its own values).
    """

    site: str
    schema: FeatureSchema
    n_train: int | None = None
    n_val: int | None = None
    class_counts: np.ndarray | None = None
    stats: FeatureStats | None = None

    @property
    def private(self) -> bool:
        """True when the site withheld its counts and statistics."""
        return self.class_counts is None

    def to_record(self) -> RecordDict:
        content = RecordDict({
            SITE: ConfigRecord({"name": self.site, "schema": json.dumps(self.schema.to_dict())}),
        })
        if self.private:
            return content
        assert self.stats is not None and self.class_counts is not None
        arrays = {}
        for m in self.stats.count:
            arrays[f"sum/{m}"] = self.stats.total[m]
            arrays[f"sumsq/{m}"] = self.stats.total_sq[m]
        counts = {f"count/{m}": int(c) for m, c in self.stats.count.items()}
        content[STATS] = ArrayRecord({k: to_array(v, np.float64) for k, v in arrays.items()})
        content[METRICS] = MetricRecord({
            N_TRAIN: int(self.n_train or 0), N_VAL: int(self.n_val or 0),
            CLASS_COUNTS: [int(c) for c in self.class_counts], **counts,
        })
        return content

    @classmethod
    def from_record(cls, content: RecordDict) -> SiteDescription:
        site = content[SITE]
        name = str(site["name"])
        schema = FeatureSchema.from_dict(json.loads(str(site["schema"])))
        if METRICS not in content:
            return cls(site=name, schema=schema)
        metrics = content[METRICS]
        arrays = {k: v.numpy() for k, v in content[STATS].items()}
        modalities = [k.removeprefix("count/") for k in metrics if k.startswith("count/")]
        stats = FeatureStats(
            count={m: int(metrics[f"count/{m}"]) for m in modalities},
            total={m: arrays[f"sum/{m}"] for m in modalities},
            total_sq={m: arrays[f"sumsq/{m}"] for m in modalities},
        )
        return cls(
            site=name,
            schema=schema,
            n_train=int(metrics[N_TRAIN]),
            n_val=int(metrics[N_VAL]),
            class_counts=np.asarray(metrics[CLASS_COUNTS], dtype=np.int64),
            stats=stats,
        )


@dataclass
class SiteMetrics:
    """What a site reports for a round, as one Flower ``MetricRecord``.

    A training reply carries the training loss, ``num_examples`` = training patients
    (Flower weights the update by it), the validation of the global weights the site
    received and, under local DP, the privacy spent; an evaluation reply carries only the
    validation part, with ``num_examples`` = validation patients. Validation is sent as
    aggregates the server can add up across sites: a loss sum and confusion counts.
    """

    num_examples: int
    train_loss: float | None = None
    val_examples: int | None = None  # None: the reply carries no validation
    val_loss_sum: float = 0.0
    confusion: np.ndarray | None = None  # int64 [C, C], rows = true class
    epsilon: float | None = None  # local DP: cumulative spend after this round
    noise_multiplier: float | None = None
    delta: float | None = None
    refused: bool = False  # the site declined the round (reason: ``refusal_reason``)

    @property
    def has_validation(self) -> bool:
        return self.val_examples is not None and self.confusion is not None

    def to_record(self) -> MetricRecord:
        rec: dict[str, Any] = {NUM_EXAMPLES: int(self.num_examples)}
        if self.refused:
            rec[REFUSED] = 1
        if self.train_loss is not None:
            rec[TRAIN_LOSS] = float(self.train_loss)
        if self.has_validation:
            assert self.confusion is not None and self.val_examples is not None
            rec[VAL_EXAMPLES] = int(self.val_examples)
            rec[VAL_LOSS_SUM] = float(self.val_loss_sum)
            rec[CONFUSION] = [int(c) for c in np.ravel(self.confusion)]
        for key, value in ((EPSILON, self.epsilon), (NOISE_MULTIPLIER, self.noise_multiplier),
                           (DELTA, self.delta)):
            if value is not None:
                rec[key] = float(value)
        return MetricRecord(rec)

    @classmethod
    def from_record(cls, rec: MetricRecord) -> SiteMetrics:
        def optional(key: str) -> float | None:
            return float(rec[key]) if key in rec else None  # type: ignore[arg-type]

        confusion = None
        if CONFUSION in rec:
            flat = np.asarray(rec[CONFUSION], dtype=np.int64)
            k = math.isqrt(flat.size)
            if k * k != flat.size:
                raise ValueError(f"{CONFUSION}: {flat.size} counts are not a square matrix")
            confusion = flat.reshape(k, k)
        return cls(
            num_examples=int(rec.get(NUM_EXAMPLES, 0)),  # type: ignore[arg-type]
            train_loss=optional(TRAIN_LOSS),
            val_examples=int(rec[VAL_EXAMPLES]) if VAL_EXAMPLES in rec else None,  # type: ignore[arg-type]
            val_loss_sum=float(rec.get(VAL_LOSS_SUM, 0.0)),  # type: ignore[arg-type]
            confusion=confusion,
            epsilon=optional(EPSILON),
            noise_multiplier=optional(NOISE_MULTIPLIER),
            delta=optional(DELTA),
            refused=bool(rec.get(REFUSED, 0)),
        )

    @classmethod
    def of_reply(cls, content: RecordDict) -> SiteMetrics | None:
        """The metrics of a reply's content, or None when it carries none."""
        rec = next(iter(content.metric_records.values()), None)
        return None if rec is None else cls.from_record(rec)


def to_array(values: np.ndarray, dtype: np.dtype | type | None = None) -> Array:
    """A numpy array as a Flower ``Array`` (contiguous; ``dtype`` converts when given)."""
    return Array(np.ascontiguousarray(values, dtype=dtype))


def site_record(name: str) -> ConfigRecord:
    return ConfigRecord({"name": name})


def site_name(content: RecordDict, default: str = "?") -> str:
    rec = content.get(SITE)
    return str(rec["name"]) if rec is not None and "name" in rec else default


def refusal(name: str, reason: str) -> RecordDict:
    """A site's answer when it declines a round (e.g. its privacy budget would run out)."""
    return RecordDict({
        METRICS: SiteMetrics(num_examples=0, refused=True).to_record(),
        SITE: ConfigRecord({"name": name, "refusal": reason}),
    })


def refusal_reason(content: RecordDict) -> str | None:
    """The reason a reply declines the round, or None for an ordinary reply."""
    metrics = content.get(METRICS)
    if metrics is None or not metrics.get(REFUSED):
        return None
    site = content.get(SITE)
    return str(site["refusal"]) if site is not None and "refusal" in site else REFUSED
