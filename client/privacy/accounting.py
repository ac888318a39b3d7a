"""The epsilon of a DP-SGD history: Opacus' RDP or PRV accountant over
``(noise_multiplier, sample_rate, steps)`` triples, with the RDP curves cached.

Composition does not depend on order, so triples with the same (noise, rate) are
merged (:func:`merge_history`), and the accountants' cost is per distinct pair.
"""

from __future__ import annotations

import functools
import math
import numbers
import warnings
from collections.abc import Iterable
from typing import Any

ACCOUNTANTS = ("rdp", "prv")

History = list[tuple[float, float, int]]


def merge_history(items: Iterable[tuple[float, float, int]]) -> History:
    """The triples with identical (noise, rate) pairs merged, empty ones dropped."""
    merged: dict[tuple[float, float], int] = {}
    for sigma, q, steps in items:
        merged[(sigma, q)] = merged.get((sigma, q), 0) + steps
    return [(sigma, q, steps) for (sigma, q), steps in merged.items() if steps > 0]


def epsilon_of(history: History, delta: float, accountant: str, *,
               integer_orders: bool = False) -> float:
    """Epsilon of ``history`` at ``delta`` with ``accountant`` (``rdp`` or ``prv``).

    ``integer_orders``: the history holds discrete (Skellam) releases, whose RDP bound
    holds at integer orders only (:mod:`common.discrete_dp`); the whole history is then
    converted by RDP at those orders, whatever the ledger's accountant (a valid bound for
    its Gaussian entries too, and the only one proven for the discrete ones).
    """
    if not is_real(delta) or not 0 < delta < 1:
        raise ValueError(f"delta must be a number with 0 < delta < 1, got {delta!r}")
    if not history:
        return 0.0
    if accountant == "rdp" or integer_orders:
        return _rdp_epsilon(history, delta, integer_orders)
    from opacus.accountants import PRVAccountant

    acc = PRVAccountant()
    acc.history = list(history)
    with warnings.catch_warnings():
        # Overflows in branches np.where discards, and RDP's order warning (PRV sizes its
        # domain with RDP): noise, not problems with the result.
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)
        return float(acc.get_epsilon(delta=delta))


def _rdp_epsilon(history: History, delta: float, integer_orders: bool = False) -> float:
    """What ``RDPAccountant(history=history).get_epsilon(delta)`` returns, bit for bit
    (with ``integer_orders``, the same over the integer orders of its grid).

    The accountant recomputes every pair's RDP curve on each call (~50 ms a pair), which
    a bisection over a long ledger repeats dozens of times; the curves are cached.
    """
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as analysis

    # Same terms, same order of summation as RDPAccountant.get_privacy_spent.
    rdp = sum([_rdp_per_step(sigma, q) * steps for sigma, q, steps in history])
    orders = RDPAccountant.DEFAULT_ALPHAS
    if integer_orders:
        from common.discrete_dp import INTEGER_ORDERS

        keep = [i for i, a in enumerate(orders) if a in INTEGER_ORDERS]
        orders, rdp = [orders[i] for i in keep], rdp[keep]
    with warnings.catch_warnings():
        # "Optimal order is the largest alpha": the bound is valid, merely not the tightest.
        warnings.simplefilter("ignore", UserWarning)
        eps, _ = analysis.get_privacy_spent(orders=orders, rdp=rdp, delta=delta)
    return float(eps)


@functools.lru_cache(maxsize=2048)
def _rdp_per_step(noise_multiplier: float, sample_rate: float) -> Any:
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as analysis

    curve = analysis.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1,
                                 orders=RDPAccountant.DEFAULT_ALPHAS)
    curve.setflags(write=False)  # shared by every caller of the cache
    return curve


def check_round_args(noise_multiplier: float, sample_rate: float, steps: int) -> None:
    """Raise ValueError unless the three describe a possible round of DP-SGD."""
    if not is_real(noise_multiplier) or not math.isfinite(noise_multiplier) \
            or noise_multiplier <= 0:
        raise ValueError(f"noise_multiplier must be a finite number > 0, "
                         f"got {noise_multiplier!r}")
    if not is_real(sample_rate) or not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate must be a number in (0, 1], got {sample_rate!r}")
    if not is_int(steps) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")


def is_real(value: Any) -> bool:
    """A real number that is not NaN (bools are not numbers here)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) \
        and not math.isnan(value)


def is_int(value: Any) -> bool:
    """An integer (bools are not numbers here)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
