"""The noise plan of a distributed-DP run, shared by the coordinator and the sites.

A distributed-DP run releases, through secure aggregation, only noised consortium sums:

* once, the class counts of the training patients (sensitivity 1);
* every round, the sum of the training patients' clipped gradients (sensitivity ``clip``);
  for the class-centroid model (:mod:`common.centroid`) round 1 is instead the sum of the
  patients' feature vectors (sensitivity 1, its own share of the budget) and round 2 the
  per-class sums of their clipped deviations from the centre (sensitivity ``clip``);
* once, after the last round, the validation confusion counts of the final model
  (sensitivity 1). Rounds are not compared on validation: a noised confusion matrix per
  round would cost budget the gradient steps need, and the learning rate decays to the
  last round, which is the run's model.

Each release is a full-batch mechanism (sampling rate 1) whose integer Skellam noise is
accounted as the Gaussian mechanism at the same multiplier, at integer RDP orders
(:mod:`common.discrete_dp`), so Rényi DP composes them exactly: the run is as private as
one Gaussian release with noise multiplier ``sigma_run``, where ``1 / sigma_run**2`` is
the sum of ``1 / sigma_j**2`` over the releases. The plan gives each kind of release a
fixed share of that sum (:data:`BUDGET_SHARES`) and calibrates ``sigma_run`` to the
run's (epsilon, delta). Every site checks each release against its own ledger and budget
before it adds its noise share; the plan only proposes the noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

# Shares of the run's privacy budget (of its summed 1 / sigma**2): the gradient steps
# get most; validation and the class counts are one release of a few numbers each.
BUDGET_SHARES = {"gradients": 0.85, "validation": 0.10, "class-counts": 0.05}
# The class-centroid model's centre release takes this much of the gradients' share.
CENTRE_SHARE = 0.10
# The delta of distributed DP when the run config leaves it 0: the consortium is one
# Gaussian mechanism over all its patients.
DEFAULT_DELTA = 1e-5


@dataclass(frozen=True)
class NoisePlan:
    """Noise multipliers of every release of one distributed-DP run."""

    epsilon: float
    delta: float
    rounds: int
    clip: float  # L2 bound of one patient's gradient
    min_sites: int  # the shares are sized so that this many sites reach the full noise
    gradient_noise: float  # noise multiplier of one round's gradient sum (x clip)
    validation_noise: float  # of the final model's confusion counts
    count_noise: float  # of the class counts
    # Of round 1's sum of feature vectors (the class-centroid model), 0 when round 1 is
    # a gradient round like the others.
    centre_noise: float = 0.0
    # The class-centroid model's class sums in a seeded random projection of this many
    # dimensions (0: none); see common.centroid.projection_for.
    projection: int = 0
    projection_seed: int = 0

    @classmethod
    def calibrate(cls, epsilon: float, delta: float, rounds: int, clip: float,
                  min_sites: int, *, centre_round: bool = False) -> NoisePlan:
        """The plan that spends exactly (``epsilon``, ``delta``) over ``rounds``; with
        ``centre_round``, round 1 releases the centre (:data:`CENTRE_SHARE`)."""
        first = 2 if centre_round else 1
        if rounds < first or min_sites < 1 or not clip > 0:
            raise ValueError(f"distributed DP needs rounds >= {first}, min_sites >= 1 and "
                             f"clip > 0 (got {rounds}, {min_sites}, {clip})")
        sigma = gaussian_noise_for(epsilon, delta)
        share = BUDGET_SHARES
        centre = CENTRE_SHARE if centre_round else 0.0
        return cls(
            epsilon=epsilon, delta=delta, rounds=rounds, clip=clip, min_sites=min_sites,
            gradient_noise=sigma * math.sqrt((rounds - first + 1)
                                             / (share["gradients"] - centre)),
            validation_noise=sigma * math.sqrt(1.0 / share["validation"]),
            count_noise=sigma * math.sqrt(1.0 / share["class-counts"]),
            centre_noise=sigma * math.sqrt(1.0 / centre) if centre_round else 0.0,
        )

    @property
    def centre_round(self) -> bool:
        """Whether round 1 releases the centre rather than a gradient sum."""
        return self.centre_noise > 0

    def round_noise(self, server_round: int) -> float:
        """The noise multiplier of training round ``server_round``'s release."""
        return self.centre_noise if self.centre_round and server_round == 1 \
            else self.gradient_noise

    def sensitivity(self, server_round: int) -> float:
        """The L2 bound of one patient's contribution to training round ``server_round``'s
        release: 1 for the centre (feature vectors of norm <= 1), ``clip`` otherwise."""
        return 1.0 if self.centre_round and server_round == 1 else self.clip

    @property
    def integer_range(self) -> int:
        """SecAgg+'s clipping range for the integer sums of ``min_sites`` sites."""
        from common.discrete_dp import integer_range

        return integer_range(self.min_sites)

    def releases(self) -> list[tuple[float, int]]:
        """``(noise multiplier, count)`` of every release the plan makes."""
        centre = [(self.centre_noise, 1)] if self.centre_round else []
        return [(self.count_noise, 1), *centre,
                (self.gradient_noise, self.rounds - len(centre)),
                (self.validation_noise, 1)]

    def epsilon_spent(self) -> float:
        """The epsilon of all the plan's releases at its delta (equals ``epsilon``, up to
        the calibration's tolerance)."""
        return gaussian_epsilon(self.releases(), self.delta)

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def gaussian_epsilon(releases: list[tuple[float, int]], delta: float,
                     orders: Sequence[float] | None = None) -> float:
    """Epsilon at ``delta`` of full-batch releases ``(noise multiplier, count)`` by RDP,
    by default at the integer orders only: the sites add Skellam noise, whose RDP is at
    most the Gaussian mechanism's at the same multiplier there
    (:mod:`common.discrete_dp`). Continuous Gaussian noise passes Opacus' whole grid."""
    import warnings

    from opacus.accountants.analysis import rdp as analysis

    from common.discrete_dp import INTEGER_ORDERS

    orders = list(INTEGER_ORDERS if orders is None else orders)
    total = sum(analysis.compute_rdp(q=1.0, noise_multiplier=sigma, steps=count, orders=orders)
                for sigma, count in releases)
    with warnings.catch_warnings():
        # "optimal order is the largest alpha": the bound stays valid, only looser; the
        # calibration's search probes such large noise on its way.
        warnings.simplefilter("ignore", UserWarning)
        eps, _ = analysis.get_privacy_spent(orders=orders, rdp=total, delta=delta)
    return float(eps)


def gaussian_noise_for(epsilon: float, delta: float,
                       orders: Sequence[float] | None = None) -> float:
    """The smallest noise multiplier (to 1e-4) of one full-batch Gaussian release that
    is (``epsilon``, ``delta``)-DP at the RDP ``orders`` of :func:`gaussian_epsilon`.
    ``k`` releases at ``sigma * sqrt(k)`` cost exactly as much (Rényi DP adds up)."""
    if not (epsilon > 0 and math.isfinite(epsilon)) or not 0 < delta < 1:
        raise ValueError(f"need a finite epsilon > 0 and 0 < delta < 1, got {epsilon}, {delta}")
    lo, hi = 1e-3, 1e3
    if gaussian_epsilon([(hi, 1)], delta, orders) > epsilon:
        raise ValueError(f"epsilon {epsilon} is too small to calibrate at delta {delta}")
    while hi - lo > 1e-4:
        mid = (lo + hi) / 2
        if gaussian_epsilon([(mid, 1)], delta, orders) <= epsilon:
            hi = mid
        else:
            lo = mid
    return hi
