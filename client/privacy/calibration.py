"""A site's privacy budget and keeping every round within it: the smallest noise
multiplier that fits the planned rounds (:func:`calibrate_noise`) and the last check
before a round trains (:func:`check_round`).

The budget (epsilon, delta) is the site's own setting, never the server's.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from client.privacy.accounting import (
    check_round_args,
    epsilon_of,
    is_int,
    is_real,
    merge_history,
)
from client.privacy.ledger import PrivacyLedger

logger = logging.getLogger(__name__)

# Noise multipliers calibrate_noise searches, in steps of SIGMA_STEP. Calibrated values
# lie on this grid so that rounds calibrated alike get the identical float, which lets
# the ledger's history merge them (the accountants' cost grows with distinct pairs).
SIGMA_MIN = 0.3
SIGMA_MAX = 100.0
SIGMA_STEP = 1e-3
_K_MIN = round(SIGMA_MIN / SIGMA_STEP)  # the grid as integers: sigma = k * SIGMA_STEP
_K_MAX = round(SIGMA_MAX / SIGMA_STEP)


class BudgetError(ValueError):
    """An invalid privacy budget, or one that leaves no room for another round."""


@dataclass(frozen=True)
class PrivacyBudget:
    """A site's lifetime (epsilon, delta) budget over all its DP-SGD training."""

    epsilon: float
    delta: float

    def __post_init__(self) -> None:
        eps, delta = self.epsilon, self.delta
        if not is_real(eps) or not math.isfinite(eps) or eps <= 0:
            raise BudgetError(f"privacy budget epsilon must be a finite number > 0, got {eps!r}")
        if not is_real(delta) or not 0 < delta < 1:
            raise BudgetError(f"privacy budget delta must be a number with 0 < delta < 1, "
                              f"got {delta!r}")
        object.__setattr__(self, "epsilon", float(eps))
        object.__setattr__(self, "delta", float(delta))

    @classmethod
    def for_site(
        cls, epsilon: float | None, delta: float | None, n_patients: int
    ) -> PrivacyBudget:
        """The budget of a site with ``n_patients``; delta defaults to 1/(10 n)."""
        if epsilon is None:
            raise BudgetError("privacy budget epsilon is not set (epsilon=None)")
        if delta is None:
            if not is_int(n_patients) or n_patients < 1:
                raise BudgetError(f"cannot default delta to 1/(10 n) with n_patients="
                                  f"{n_patients!r}")
            delta = 1.0 / (10 * n_patients)
        return cls(epsilon=epsilon, delta=delta)


def calibrate_noise(
    ledger: PrivacyLedger,
    budget: PrivacyBudget,
    sample_rate: float,
    steps_per_round: int,
    rounds_left: int,
    *,
    reserved: Sequence[tuple[float, float, int]] = (),
) -> float:
    """Smallest noise multiplier that keeps the ledger plus ``rounds_left`` rounds in budget.

    ``reserved``: later releases ``(noise, rate, steps)`` the budget must still hold, such
    as local DP's noised validation counts after the last round (Skellam releases: the
    epsilon is then taken at integer orders).

    The result lies on a grid of ``SIGMA_STEP`` in [``SIGMA_MIN``, ``SIGMA_MAX``]: it
    fits, and the grid point below it does not (unless it is ``SIGMA_MIN``). Raises
    :class:`BudgetError` when even ``SIGMA_MAX`` does not fit.
    """
    if not is_int(rounds_left) or rounds_left < 1:
        raise ValueError(f"rounds_left must be an integer >= 1, got {rounds_left!r}")
    check_round_args(SIGMA_MIN, sample_rate, steps_per_round)

    def fits(accountant: str) -> Callable[[int], bool]:
        def fits_k(k: int) -> bool:
            history = merge_history([*ledger.projected_history(
                _sigma(k), sample_rate, steps_per_round, rounds_left), *reserved])
            return epsilon_of(history, budget.delta, accountant,
                              integer_orders=ledger.discrete or bool(reserved)) <= budget.epsilon

        return fits_k

    k = _smallest_fitting(fits("rdp"), _K_MAX, bracket=False)
    if ledger.accountant == "prv":
        # PRV costs up to seconds a call, more the smaller the noise; RDP is cheap here
        # (cached) and looser, so its answer is a close first guess to bracket from.
        k = _smallest_fitting(fits("prv"), _K_MAX if k is None else k, bracket=True)
    if k is None:
        spent = ledger.epsilon(budget.delta)
        raise BudgetError(
            f"privacy budget exhausted: spent epsilon {spent:.4g} of {budget.epsilon:.4g} "
            f"(remaining {max(0.0, budget.epsilon - spent):.4g}) at delta {budget.delta:.3g}; "
            f"even noise multiplier {SIGMA_MAX:g} does not fit {rounds_left} more round(s) "
            f"of {steps_per_round} steps at sample rate {sample_rate:.4g}"
        )
    sigma = _sigma(k)
    logger.debug("calibrated noise multiplier %.3f for %d round(s) of %d steps at q=%.4g "
                 "(%s)", sigma, rounds_left, steps_per_round, sample_rate, ledger.accountant)
    return sigma


def check_round(
    ledger: PrivacyLedger,
    budget: PrivacyBudget,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    *,
    reserved: Sequence[tuple[float, float, int]] = (),
) -> str | None:
    """None when the round (and the ``reserved`` releases after it) fits the budget, else
    the reason to refuse it."""
    after = ledger.epsilon_with([(noise_multiplier, sample_rate, steps), *reserved],
                                budget.delta, discrete=bool(reserved))
    if after <= budget.epsilon:
        return None
    spent = ledger.epsilon(budget.delta)
    return (f"round would bring epsilon to {after:.4g} > budget {budget.epsilon:.4g} "
            f"(spent {spent:.4g}, delta {budget.delta:.3g})")


def _smallest_fitting(fits: Callable[[int], bool], guess: int, *, bracket: bool) -> int | None:
    """Smallest grid index k in [_K_MIN, _K_MAX] with ``fits(k)``, None when none fits.

    Assumes ``fits`` is monotone (more noise, less epsilon). With ``bracket`` it walks
    geometrically from ``guess`` to bracket the answer before bisecting, which keeps the
    probes near the answer; without, it bisects the whole range, ``guess`` unused.
    """
    if not bracket:
        if not fits(_K_MAX):
            return None
        if fits(_K_MIN):
            return _K_MIN
        lo, hi = _K_MIN, _K_MAX
    elif fits(guess):
        hi = guess
        while True:
            if hi == _K_MIN:
                return _K_MIN
            lo = max(_K_MIN, int(hi * 0.8))
            if not fits(lo):
                break
            hi = lo
    else:
        lo = guess
        while True:
            if lo == _K_MAX:
                return None
            hi = min(_K_MAX, math.ceil(lo * 1.25))
            if fits(hi):
                break
            lo = hi
    # Invariant: lo does not fit, hi fits.
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid
    return hi


def _sigma(k: int) -> float:
    # round() makes the float the shortest decimal (1.234, not 1.2340000000000002), so it
    # is the same value after a JSON round trip and merges with its equals.
    return round(k * SIGMA_STEP, 3)
