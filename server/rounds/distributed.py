"""The coordinator's side of distributed DP: plan the noise, open the noised sums, step.

Every value a site releases in a distributed-DP run reaches the coordinator only as a
consortium sum through SecAgg+, already carrying Gaussian noise the sites added
(:mod:`client.distributed_round`). The coordinator:

* calibrates the run's :class:`~common.distributed_dp.NoisePlan` from its (epsilon,
  delta), rounds and clipping bound, with shares sized for every site that joined;
* asks for the noised class counts once, for the class prior of the logit-adjusted loss
  and the patient count the gradient sum is divided by;
* each round, turns the noised gradient sum into a gradient step: the aggregate handed to
  the strategy is ``global - lr * sum / patients``, so FedAvg adopts the step and FedAvgM
  adds server momentum (post-processing, which costs no privacy);
* for the class-centroid model (:mod:`common.centroid`), takes the centre from round 1's
  noised sum of feature vectors and the class centroids from round 2's noised class sums
  (:class:`CentroidFit`) instead of gradient steps;
* after the last round, turns the final model's noised validation confusion counts into
  one pooled validation reply. The run's model is the last round's: rounds are not
  ranked on validation (see :mod:`common.distributed_dp`).

A round whose sum holds fewer sites than the shares were sized for carries less noise
than accounted: it is discarded, never used.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
from flwr.app import ArrayRecord, Message, RecordDict

from common.centroid import (
    CENTROID_KIND,
    centre_from_sum,
    centroid_weights,
    projection_for,
)
from common.config import RunConfig, TrainConfig
from common.discrete_dp import integer_scale
from common.distributed_dp import DEFAULT_DELTA, NoisePlan
from common.protocol import METRICS, SITE, SiteMetrics, site_record, to_array
from server.secagg import SecAggSettings, SecureRound

logger = logging.getLogger(__name__)

# Site name of the pooled validation reply (one noised sum, not a site).
NOISED_SUM = "consortium (noised sum)"


def noise_plan_for(cfg: RunConfig, sites: int) -> NoisePlan:
    """The run's noise plan: shares sized for ``sites`` (every site that joined)."""
    plan = NoisePlan.calibrate(cfg.epsilon, cfg.delta or DEFAULT_DELTA, cfg.rounds,
                               cfg.max_grad_norm, sites,
                               centre_round=cfg.model.kind == CENTROID_KIND)
    logger.info("distributed DP: epsilon %g at delta %g over %d rounds; noise multipliers "
                "%.3f (gradients), %.3f (validation), %.3f (class counts); shares sized "
                "for %d sites", plan.epsilon, plan.delta, plan.rounds, plan.gradient_noise,
                plan.validation_noise, plan.count_noise, sites)
    return plan


def summed(secure: SecureRound, sensitivity: float) -> list[np.ndarray] | None:
    """The sites' noised integer vectors added up, back in the units of a release whose
    patients each move it by at most ``sensitivity`` (SecAgg+ yields the integers' mean:
    each site sends weight 1)."""
    if secure.mean_update is None or secure.accepted == 0:
        return None
    scale = integer_scale(sensitivity)
    return [np.rint(np.asarray(v, dtype=np.float64) * secure.accepted) / scale
            for v in secure.mean_update]


def too_few_sites(secure: SecureRound, plan: NoisePlan) -> str | None:
    """Why the round's sum must be discarded, or None when it carries the full noise."""
    if secure.accepted >= plan.min_sites:
        return None
    return (f"the sum holds {secure.accepted} sites, the noise shares are sized for "
            f"{plan.min_sites}: discarded, not used (it would carry less noise than "
            "accounted)")


def class_prior(counts: np.ndarray) -> tuple[np.ndarray, float]:
    """Class frequencies and the patient total from noised counts (each at least 1:
    a noised count can be negative, and log(0) would end training)."""
    clean = np.maximum(np.asarray(counts, dtype=np.float64), 1.0)
    total = float(clean.sum())
    return clean / total, total


@dataclass
class GradientStep:
    """Turns a round's noised gradient sum into the aggregate the strategy adopts."""

    patients: float  # noised total of training patients
    learning_rate: float

    def aggregate(self, global_arrays: ArrayRecord, gradient_sums: list[np.ndarray]
                  ) -> ArrayRecord:
        keys = list(global_arrays.keys())
        if len(gradient_sums) != len(keys):
            raise ValueError(f"noised sum has {len(gradient_sums)} gradient tensors, the "
                             f"model {len(keys)}")
        out = {}
        for key, grad in zip(keys, gradient_sums, strict=True):
            weights = global_arrays[key].numpy()
            step = self.learning_rate * grad.reshape(weights.shape) / self.patients
            out[key] = to_array((weights - step).astype(weights.dtype))
        return ArrayRecord(out)


@dataclass
class CentroidFit:
    """Turns the class-centroid model's two noised sums into its weights."""

    plan: NoisePlan
    class_counts: np.ndarray  # noised
    patients: float  # noised total

    def aggregate(self, global_arrays: ArrayRecord, sums: list[np.ndarray], server_round: int,
                  sites: int) -> ArrayRecord:
        state = {k: global_arrays[k].numpy() for k in global_arrays}
        dtypes = {k: v.dtype for k, v in state.items()}
        if len(sums) != len(state):
            raise ValueError(f"noised sum has {len(sums)} tensors, the model {len(state)}")
        released = dict(zip(state, sums, strict=True))
        state["projection"] = np.array([self.plan.projection, self.plan.projection_seed])
        if self.plan.centre_round and server_round == 1:
            state["centre"] = centre_from_sum(released["centre"].ravel(), self.patients,
                                              self.plan.projection, self.plan.projection_seed)
        else:
            weight = released["head.weight"].reshape(state["head.weight"].shape)
            # ``sites`` shares, each sized so that ``min_sites`` of them make the plan's noise.
            noise_std = (self.plan.round_noise(server_round) * self.plan.clip
                         * np.sqrt(sites / self.plan.min_sites))
            state["head.weight"], state["head.bias"] = centroid_weights(
                weight, self.class_counts, noise_std, self.plan.projection,
                self.plan.projection_seed)
            state["radius"] = np.full(state["radius"].shape, self.plan.clip)
        return ArrayRecord({k: to_array(np.asarray(v).astype(dtypes[k]))
                            for k, v in state.items()})


def validation_reply(confusion_sum: np.ndarray, n_classes: int, request: Message) -> Message:
    """The noised pooled confusion counts as one validation reply (rounded, clipped at 0:
    post-processing of the noised sum)."""
    confusion = np.maximum(np.rint(confusion_sum.reshape(n_classes, n_classes)), 0)
    confusion = confusion.astype(np.int64)
    n = int(confusion.sum())
    # No loss is released (its sensitivity is unbounded): selection uses macro-F1 alone.
    metrics = SiteMetrics(num_examples=n, val_examples=n, val_loss_sum=0.0, confusion=confusion)
    return Message(content=RecordDict({METRICS: metrics.to_record(),
                                       SITE: site_record(NOISED_SUM)}), reply_to=request)


def secagg_settings(timeout: float, plan: NoisePlan) -> SecAggSettings:
    """SecAgg+ for integer noised sums: a clipping range the sites' sums stay within and
    twice as many quantization levels, so that Flower carries each integer exactly; and
    unmasking that needs every site (the noise shares are sized for all that joined)."""
    bound = plan.integer_range
    return SecAggSettings(threshold=1.0, clipping_range=float(bound),
                          quantization_range=2 * bound, timeout=timeout)


@dataclass
class DistributedRun:
    """What the round executor needs to open a distributed-DP run's noised sums."""

    plan: NoisePlan
    patients: float
    n_classes: int
    train: TrainConfig  # the step's learning rate and its schedule over the run
    centroids: CentroidFit | None = None  # the class-centroid model, fit instead of steps

    @classmethod
    def of(cls, outcome_record: dict, cfg: RunConfig, n_classes: int, n_features: int
           ) -> DistributedRun:
        """The run of ``outcome_record`` (the outcome's ``distributed_dp``). The class-
        centroid model's projection is chosen here, from the noised class counts, and
        written into the record's plan (the same choice again on a resume)."""
        plan = NoisePlan(**outcome_record["noise_plan"])
        patients = float(outcome_record["patients"])
        counts = np.asarray(outcome_record["class_counts"])
        centroids = None
        if cfg.model.kind == CENTROID_KIND:
            k = projection_for(n_features, plan.gradient_noise * plan.clip, counts, plan.clip)
            if k and not plan.projection:
                plan = replace(plan, projection=k, projection_seed=cfg.seed)
                outcome_record["noise_plan"] = plan.to_dict()
                logger.info("centre and class sums in a %d-dimensional random projection "
                            "(the noise would swamp the rarest class in %d features)",
                            k, n_features)
            centroids = CentroidFit(plan, counts, patients)
        return cls(plan, patients, n_classes, cfg.train, centroids)

    def learning_rate(self, server_round: int) -> float:
        from common.optimization import lr_at

        return lr_at((server_round - 1) / self.plan.rounds, self.train)

    def open_training(self, secure: SecureRound, global_arrays: ArrayRecord,
                      server_round: int) -> None:
        """Set ``secure.aggregate`` to the gradient step, or leave it None when the sum
        must be discarded."""
        secure.aggregate = None
        problem = too_few_sites(secure, self.plan)
        sums = summed(secure, self.plan.sensitivity(server_round))
        if problem is not None or sums is None:
            if problem is not None:
                secure.rejected.append({"site": NOISED_SUM, "reason": problem})
            return
        if self.centroids is not None:
            secure.aggregate = self.centroids.aggregate(global_arrays, sums, server_round,
                                                        secure.accepted)
        else:
            step = GradientStep(self.patients, self.learning_rate(server_round))
            secure.aggregate = step.aggregate(global_arrays, sums)
        secure.num_examples = secure.accepted  # weight of the one consortium reply

    def open_validation(self, secure: SecureRound, request: Message) -> Message | None:
        """The pooled validation reply of a validate-only round, or None."""
        sums = summed(secure, 1.0)  # confusion counts
        if too_few_sites(secure, self.plan) is not None or sums is None:
            return None
        return validation_reply(sums[0], self.n_classes, request)
