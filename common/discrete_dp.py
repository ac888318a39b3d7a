"""Integer releases for secure aggregation: rounding, Skellam noise and its accounting.

SecAgg+ adds integers modulo ``2**32``, so a site's noised sum must be an integer vector
before it is masked: rounding floats after the noise is added (what SecAgg+'s own
quantization does) would leave the rounding out of the privacy account. Instead:

* every patient's clipped contribution is scaled so that its L2 bound becomes
  :data:`UNITS` integer units and each coordinate is rounded to the nearest integer; the
  rounded contribution's L2 norm is at most ``UNITS + sqrt(d) / 2`` for ``d`` coordinates
  (:func:`rounded_sensitivity`), and its L1 norm at most the square of that (an integer
  vector's ``|k| <= k**2`` coordinate by coordinate);
* each site adds a share of *Skellam* noise (a difference of two Poisson variables,
  Agarwal, Kairouz and Liu, NeurIPS 2021). Skellam variables add up to a Skellam
  variable, so the shares of the sites a round keeps sum to exactly the noise accounted
  for, in integers, with no rounding after the noise;
* the Skellam mechanism with variance ``mu``, L2 sensitivity ``D2`` and L1 sensitivity
  ``D1`` is ``(a, e(a))``-RDP at every integer order ``a > 1`` with
  ``e(a) <= a D2**2 / (2 mu) + min(((2a - 1) D2**2 + 6 D1) / (4 mu**2), 3 D1 / (2 mu))``
  (their Theorem 3.5). :func:`skellam_variance` picks ``mu`` so that this is at most
  the Gaussian mechanism's ``a / (2 sigma**2)`` at the noise multiplier a run planned,
  so the ledger and the plan account the release as that Gaussian, at integer orders
  (:data:`INTEGER_ORDERS`) only, where the bound is proven.

Flower's SecAgg+ then carries the integers exactly: with a quantization range of twice
the clipping range its fixed-point map is ``v -> v + range`` (:func:`integer_range`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# Integer units of one patient's largest contribution (its clipping bound). Rounding adds
# at most sqrt(d) / 2 to the L2 norm: 0.3 % for the 720 features of a class sum.
UNITS = 2 ** 12
# SecAgg+'s modulus (Flower's default) and the int32 its quantizer rounds into.
MODULUS = 2 ** 32
_INT32_LIMIT = 2 ** 31 - 1


def integer_orders() -> list[float]:
    """The integer RDP orders of Opacus' default grid (2-10, 12-63): where the Skellam
    bound holds, and so the orders every discrete account is converted at."""
    from opacus.accountants import RDPAccountant

    return [a for a in RDPAccountant.DEFAULT_ALPHAS if float(a).is_integer()]


INTEGER_ORDERS = tuple(integer_orders())


def integer_scale(sensitivity: float) -> float:
    """Units per unit of the released quantity: a contribution of norm ``sensitivity``
    becomes :data:`UNITS` long."""
    if not sensitivity > 0:
        raise ValueError(f"sensitivity must be > 0, got {sensitivity!r}")
    return UNITS / sensitivity


def rounded_sensitivity(dims: int) -> float:
    """L2 bound, in units, of one patient's contribution of ``dims`` rounded coordinates
    (0 for contributions that are already integers, such as counts)."""
    return UNITS + math.sqrt(dims) / 2 if dims else float(UNITS)


def to_units(per_patient: np.ndarray, sensitivity: float) -> np.ndarray:
    """Each patient's row (norm <= ``sensitivity``) in integer units, rounded
    coordinate by coordinate; float64 holds the sums exactly."""
    return np.rint(np.asarray(per_patient, dtype=np.float64) * integer_scale(sensitivity))


def skellam_variance(noise_multiplier: float, sensitivity_units: float) -> float:
    """Variance of the consortium's Skellam noise whose RDP, at every integer order, is
    at most the Gaussian mechanism's at ``noise_multiplier``.

    With ``mu = (sigma D2)**2 (1 + 2 eta)`` and ``eta = 9 / (4 sigma**2 D2**2)`` the
    Gaussian term shrinks by at least the Skellam bound's extra term (largest at order 2,
    with ``D1 <= D2**2``); for ``D2 >= UNITS`` the extra variance is below 1e-5.
    """
    sigma, d2 = float(noise_multiplier), float(sensitivity_units)
    eta = 9.0 / (4.0 * sigma ** 2 * d2 ** 2)
    return (sigma * d2) ** 2 * (1.0 + 2.0 * eta)


def skellam_rdp(variance: float, sensitivity_units: float,
                orders: Sequence[float] = INTEGER_ORDERS) -> np.ndarray:
    """The Skellam mechanism's RDP bound at integer ``orders`` (L1 sensitivity taken as
    ``D2**2``, which bounds it for integer vectors)."""
    d2sq = float(sensitivity_units) ** 2
    d1, mu = d2sq, float(variance)
    out = []
    for a in orders:
        if not float(a).is_integer() or a <= 1:
            raise ValueError(f"the Skellam bound holds at integer orders > 1, got {a}")
        extra = min(((2 * a - 1) * d2sq + 6 * d1) / (4 * mu ** 2), 3 * d1 / (2 * mu))
        out.append(a * d2sq / (2 * mu) + extra)
    return np.asarray(out)


def skellam_share(shape: Sequence[int] | int, variance: float,
                  generator: np.random.Generator | None = None) -> np.ndarray:
    """One site's Skellam share of ``variance``: Poisson(variance/2) - Poisson(variance/2),
    from the operating system's entropy (a seeded share could be subtracted by anyone who
    knows the seed)."""
    if variance < 0:
        raise ValueError(f"variance must be >= 0, got {variance!r}")
    rng = generator if generator is not None else np.random.default_rng()
    half = variance / 2.0
    return (rng.poisson(half, size=shape) - rng.poisson(half, size=shape)).astype(np.float64)


def integer_range(sites: int) -> int:
    """SecAgg+'s clipping range for ``sites`` integer vectors: a power of two ``B`` with
    ``sites * 2B`` below the modulus and ``2B`` an int32 (Flower's quantizer rounds into
    int32). With a quantization range of ``2B`` Flower maps each value ``v`` to ``v + B``
    exactly. Each site keeps its sum within ``B / 2`` (:func:`bounded`) so that its noise
    share cannot reach the range."""
    if sites < 1:
        raise ValueError(f"sites must be >= 1, got {sites}")
    exponent = min(int(math.log2(_INT32_LIMIT // 2)),
                   math.floor(math.log2((MODULUS - 1) / (2 * sites))))
    return 2 ** exponent


def bounded(units: np.ndarray, sites: int) -> np.ndarray:
    """``units`` clamped to half the secure range, coordinate by coordinate: a clamp moves
    no coordinate by more than the patient who moved it, so the sensitivity holds."""
    limit = integer_range(sites) / 2
    return np.clip(units, -limit, limit)
