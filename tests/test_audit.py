"""The membership-inference attack metrics."""

from __future__ import annotations

import numpy as np
import pytest

from simulations.membership_inference import attack_metrics


def test_separable_scores_give_auc_one_and_full_tpr():
    r = attack_metrics(np.linspace(2, 3, 50), np.linspace(0, 1, 200))
    assert r.auc == pytest.approx(1.0)
    assert r.tpr_at_1pct_fpr == pytest.approx(1.0)


def test_identical_distributions_are_near_chance():
    rng = np.random.default_rng(0)
    r = attack_metrics(rng.normal(size=4000), rng.normal(size=4000))
    assert abs(r.auc - 0.5) < 0.03
    assert r.tpr_at_1pct_fpr < 0.03


def test_reversed_scores_give_auc_zero():
    r = attack_metrics(np.zeros(10), np.ones(10))
    assert r.auc == pytest.approx(0.0)
    assert r.tpr_at_1pct_fpr == pytest.approx(0.0)
