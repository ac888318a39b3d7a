"""Integer releases under SecAgg+: rounding bounds, Skellam shares and their accounting,
Flower's fixed-point map carrying integers exactly, and the ledger's discrete entries."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from opacus.accountants.analysis import rdp as analysis

from common.discrete_dp import (
    INTEGER_ORDERS,
    MODULUS,
    UNITS,
    bounded,
    integer_range,
    integer_scale,
    rounded_sensitivity,
    skellam_rdp,
    skellam_share,
    skellam_variance,
    to_units,
)


@pytest.mark.parametrize("sigma", [0.2, 0.64, 1.5, 4.0, 40.0])
@pytest.mark.parametrize("dims", [0, 32, 720, 1_000_000])
def test_skellam_release_is_no_less_private_than_the_planned_gaussian(sigma, dims):
    units = rounded_sensitivity(dims)
    skellam = skellam_rdp(skellam_variance(sigma, units), units)
    gaussian = analysis.compute_rdp(q=1.0, noise_multiplier=sigma, steps=1,
                                    orders=list(INTEGER_ORDERS))
    assert np.all(skellam <= gaussian)
    # ... and hardly noisier: the extra variance is negligible.
    assert skellam_variance(sigma, units) <= (sigma * units) ** 2 * (1 + 1e-4)


def test_skellam_bound_is_refused_at_orders_where_it_is_not_proven():
    with pytest.raises(ValueError, match="integer orders"):
        skellam_rdp(1e6, UNITS, orders=[1.5])
    assert all(float(a).is_integer() and a > 1 for a in INTEGER_ORDERS)


def test_skellam_shares_are_integers_that_add_up_to_the_planned_variance():
    rng = np.random.default_rng(0)
    total, sites = 4.0e6, 8
    shares = sum(skellam_share(200_000, total / sites, rng) for _ in range(sites))
    np.testing.assert_array_equal(shares, np.rint(shares))
    assert abs(shares.mean()) < 5 * np.sqrt(total / 200_000)
    assert shares.var() == pytest.approx(total, rel=0.02)


def test_rounded_contributions_stay_within_their_integer_sensitivity():
    rng = np.random.default_rng(1)
    rows = rng.standard_normal((500, 720))
    clip = 0.5
    rows *= clip / np.linalg.norm(rows, axis=1, keepdims=True)  # every row at the bound
    units = to_units(rows, clip)
    np.testing.assert_array_equal(units, np.rint(units))
    norms = np.linalg.norm(units, axis=1)
    assert norms.max() <= rounded_sensitivity(720)
    assert np.abs(units / integer_scale(clip) - rows).max() <= 0.5 / integer_scale(clip)


@pytest.mark.parametrize("sites", [1, 3, 12, 100, 1000])
def test_integer_range_fits_the_modulus_and_flowers_int32_quantizer(sites):
    b = integer_range(sites)
    assert b & (b - 1) == 0  # a power of two
    assert sites * 2 * b < MODULUS and 2 * b < 2 ** 31
    clamped = bounded(np.array([10.0 ** 12, -(10.0 ** 12), 5.0]), sites)
    np.testing.assert_array_equal(clamped, [b / 2, -b / 2, 5.0])


def test_flowers_secagg_arithmetic_carries_integer_sums_exactly():
    """Replays what SecAgg+ does to every site's vector (weight 1) and to the masked sum,
    with the range the product configures: the sum comes back exact."""
    from flwr.common.secure_aggregation.ndarrays_arithmetic import (
        factor_combine,
        factor_extract,
        parameters_addition,
        parameters_mod,
    )
    from flwr.common.secure_aggregation.quantization import dequantize, quantize

    sites = 12
    b = integer_range(sites)
    rng = np.random.default_rng(2)
    vectors = [bounded(rng.integers(-b // 2, b // 2, size=50).astype(np.float64), sites)
               for _ in range(sites)]
    total = None
    for v in vectors:
        # int64, as after the site adds its int64 masks
        q = [a.astype(np.int64) for a in factor_combine(2 * b, quantize([v], float(b), 2 * b))]
        total = q if total is None else parameters_addition(total, q)
    ratio, summed = factor_extract(parameters_mod(total, MODULUS))
    back = dequantize(summed, float(b), 2 * b)[0]
    back = (back - (sites - 1) * b) * (2 * b / ratio)  # Flower's offset and mean
    np.testing.assert_array_equal(np.rint(back * sites), np.sum(vectors, axis=0))


# --- the ledger's discrete entries ---------------------------------------------------


def _entry(mechanism: str, sigma: float = 1.0):
    from client.privacy import LedgerEntry

    return LedgerEntry(run_id="r", round=1, noise_multiplier=sigma, sample_rate=1.0, steps=1,
                       timestamp=datetime.now(UTC).isoformat(), delta=1e-5,
                       mechanism=mechanism)


def test_a_skellam_entry_is_accounted_at_integer_orders_and_written_as_version_3(
        tmp_path: Path):
    from client.privacy import PrivacyLedger

    gaussian = PrivacyLedger.open(tmp_path / "g.json")
    gaussian.record(_entry("gaussian", 3.7))
    assert json.loads(gaussian.path.read_text())["version"] == 2
    discrete = PrivacyLedger.open(tmp_path / "s.json")
    discrete.record(_entry("skellam", 3.7))
    stored = json.loads(discrete.path.read_text())
    assert stored["version"] == 3 and stored["entries"][0]["mechanism"] == "skellam"
    assert discrete.discrete and not gaussian.discrete
    # Fewer orders to choose from: never a smaller epsilon than the full grid gives.
    assert discrete.epsilon(1e-5) >= gaussian.epsilon(1e-5) > 0
    reopened = PrivacyLedger.open(discrete.path)
    assert reopened.entries == discrete.entries
    assert reopened.epsilon(1e-5) == discrete.epsilon(1e-5)
    # A release still to come is accounted the same way as a recorded one.
    assert gaussian.epsilon_with([(3.7, 1.0, 1)], 1e-5, discrete=True) == pytest.approx(
        PrivacyLedger.open(tmp_path / "none.json").epsilon_with(
            [(3.7, 1.0, 1), (3.7, 1.0, 1)], 1e-5, discrete=True))


def test_an_unknown_mechanism_is_refused(tmp_path: Path):
    from client.privacy import LedgerError, PrivacyLedger

    with pytest.raises(ValueError, match="mechanism"):
        _entry("laplace")
    ledger = PrivacyLedger.open(tmp_path / "s.json")
    ledger.record(_entry("skellam"))
    data = json.loads(ledger.path.read_text())
    data["entries"][0]["mechanism"] = "laplace"
    ledger.path.write_text(json.dumps(data))
    before = ledger.path.read_bytes()
    with pytest.raises(LedgerError, match="mechanism"):
        PrivacyLedger.open(ledger.path)
    assert ledger.path.read_bytes() == before


def test_a_plan_spending_the_whole_budget_fits_a_site_ledger_exactly(tmp_path: Path):
    """The plan and the site's ledger account alike: a site whose budget is the run's
    epsilon takes every release of the plan and is then at the budget."""
    from client.privacy import PrivacyLedger
    from common.distributed_dp import NoisePlan

    plan = NoisePlan.calibrate(3.0, 1e-5, 2, 0.5, 12, centre_round=True)
    ledger = PrivacyLedger.open(tmp_path / "s.json")
    for sigma, count in plan.releases():
        for _ in range(count):
            assert ledger.epsilon_with([(sigma, 1.0, 1)], 1e-5, discrete=True) <= 3.0
            ledger.record(_entry("skellam", sigma))
    assert ledger.epsilon(1e-5) == pytest.approx(plan.epsilon_spent(), rel=1e-9)
    assert 2.99 < ledger.epsilon(1e-5) <= 3.0
