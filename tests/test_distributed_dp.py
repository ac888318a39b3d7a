"""Distributed DP: the noise plan, a site's clipped sums and releases, and (e2e) that no
per-site value leaves a virtual hospital in clear."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from message_audit import audited_simulation
from scripted_grid import synthetic_data
from torch import nn

from client.distributed_dp import clipped_gradient_sum
from client.distributed_round import skellam_share_variance
from common.config import RunConfig
from common.distributed_dp import NoisePlan, gaussian_epsilon
from common.preprocessing import Standardizer
from common.protocol import (
    CLASS_COUNTS_TASK,
    TRAIN_TASK,
    VALIDATE_TASK,
    RoundConfig,
)


@pytest.fixture
def tiny_data():
    return synthetic_data(30, seed=3)


@pytest.mark.parametrize("epsilon", [1.0, 3.0, 8.0])
def test_noise_plan_spends_exactly_the_budget(epsilon):
    plan = NoisePlan.calibrate(epsilon, 1e-5, 20, 1.0, 12)
    assert plan.epsilon_spent() == pytest.approx(epsilon, abs=2e-3)
    assert plan.epsilon_spent() <= epsilon
    # One release each: the class counts have half the validation's share, more noise.
    assert plan.count_noise == pytest.approx(plan.validation_noise * math.sqrt(2))
    # Fewer rounds, less noise per round for the same budget.
    assert NoisePlan.calibrate(epsilon, 1e-5, 5, 1.0, 12).gradient_noise < plan.gradient_noise


def test_shares_of_the_minimum_sites_add_up_to_the_planned_noise():
    from common.discrete_dp import UNITS

    plan = NoisePlan.calibrate(8.0, 1e-5, 10, 0.5, 7)
    share = skellam_share_variance(plan.gradient_noise, UNITS, plan.min_sites)
    planned = (plan.gradient_noise * UNITS) ** 2
    assert share * plan.min_sites == pytest.approx(planned, rel=1e-6)
    assert share * plan.min_sites >= planned
    # A sum over fewer sites would carry less noise than accounted.
    assert share * (plan.min_sites - 1) < planned


def test_more_rounds_than_planned_cost_more_than_the_budget():
    plan = NoisePlan.calibrate(3.0, 1e-5, 10, 1.0, 5)
    releases = [(plan.count_noise, 1), (plan.gradient_noise, 11), (plan.validation_noise, 1)]
    assert gaussian_epsilon(releases, 1e-5) > 3.0


def test_round_config_carries_the_noise_plan():
    plan = NoisePlan.calibrate(8.0, 1e-5, 4, 1.0, 3)
    rc = RoundConfig("abc", task=VALIDATE_TASK, noise_plan=plan)
    back = RoundConfig.from_record(rc.to_record())
    assert back.noise_plan == plan and back.task == VALIDATE_TASK
    assert RoundConfig.from_record(RoundConfig("abc").to_record()).noise_plan is None


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


def test_clipped_gradient_sum_matches_one_patient_at_a_time():
    torch.manual_seed(0)
    model = _Tiny()
    x, y = torch.randn(9, 4) * 3, torch.randint(0, 3, (9,))
    mask = torch.ones(9, 1)
    log_prior = torch.log(torch.tensor([0.5, 0.3, 0.2]))
    clip = 0.4
    sums, loss = clipped_gradient_sum(model, x, mask, y, log_prior, clip, chunk=4)
    expected = {k: torch.zeros_like(p) for k, p in model.named_parameters()}
    total = 0.0
    for i in range(9):
        model.zero_grad()
        li = nn.functional.cross_entropy(model(x[i:i + 1], mask[i:i + 1]) + log_prior,
                                         y[i:i + 1])
        li.backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters()}
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads.values()))
        for k, g in grads.items():
            expected[k] += g * min(1.0, clip / float(norm))
        total += float(li.detach())
    for k in expected:
        torch.testing.assert_close(sums[k], expected[k], rtol=1e-4, atol=1e-5)
    assert loss == pytest.approx(total, rel=1e-5)
    # No patient contributes more than the clipping bound.
    norm = torch.sqrt(sum(v.pow(2).sum() for v in sums.values()))
    assert float(norm) <= 9 * clip + 1e-5


def test_per_patient_standardizer_uses_each_patients_own_values(tiny_data):
    st = Standardizer.for_each_patient(tiny_data.schema)
    out = st.transform(tiny_data)
    for j, m in enumerate(out.modality_names):
        rows = out.features[m][tiny_data.mask[:, j]]
        np.testing.assert_allclose(rows.mean(axis=1), 0.0, atol=1e-5)
        np.testing.assert_allclose(rows.std(axis=1), 1.0, atol=1e-3)
    back = Standardizer.from_arrays(st.to_arrays())
    assert back.per_patient
    np.testing.assert_array_equal(back.transform(tiny_data).concat(), out.concat())
    # One patient's values never change another patient's input.
    changed = tiny_data.copy()
    m0 = changed.modality_names[0]
    changed.features[m0][0] += 100.0
    np.testing.assert_array_equal(st.transform(changed).concat()[1:], out.concat()[1:])


def _privacy(tmp_path: Path, epsilon: float):
    from client.dp import site_privacy

    cfg = RunConfig(epsilon=epsilon, state_dir=str(tmp_path))
    return site_privacy("h1", 10, {}, cfg)


def _site(data):
    from client.site import Site

    return Site("h1", data, data)


def test_class_counts_release_is_noised_and_recorded(tmp_path, tiny_data):
    from client.distributed_round import release

    plan = NoisePlan.calibrate(50.0, 1e-5, 1, 1.0, 1)  # little noise: counts show through
    privacy = _privacy(tmp_path, 60.0)
    rc = RoundConfig(task=CLASS_COUNTS_TASK, noise_plan=plan)
    out = release(_site(tiny_data), rc, RunConfig(), privacy, setup=None, state=None,
                  run_id="r")
    from common.discrete_dp import integer_scale

    counts = np.bincount(tiny_data.labels, minlength=tiny_data.schema.n_classes)
    released = out.vector[0]
    assert released.shape == counts.shape
    np.testing.assert_array_equal(released, np.rint(released))  # integers for SecAgg+
    assert not np.array_equal(released / integer_scale(1.0), counts)  # noised
    np.testing.assert_allclose(released / integer_scale(1.0), counts, atol=3.0)
    entries = privacy.ledger.entries
    assert [(e.noise_multiplier, e.sample_rate, e.steps, e.mechanism) for e in entries] == [
        (plan.count_noise, 1.0, 1, "skellam")]
    assert entries[0].delta == pytest.approx(1e-5)
    assert out.epsilon == pytest.approx(privacy.ledger.epsilon(1e-5))


def test_release_past_the_budget_is_refused_and_not_recorded(tmp_path, tiny_data):
    from client.distributed_round import release
    from client.dp import RoundRefused

    plan = NoisePlan.calibrate(8.0, 1e-5, 2, 1.0, 3)
    privacy = _privacy(tmp_path, 2.0)  # the site's own budget is smaller than the plan's
    rc = RoundConfig(task=CLASS_COUNTS_TASK, noise_plan=plan)
    release(_site(tiny_data), rc, RunConfig(), privacy, setup=None, state=None, run_id="r")
    rc = RoundConfig(task=TRAIN_TASK, noise_plan=plan, server_round=2)
    with pytest.raises(RoundRefused, match="budget"):
        release(_site(tiny_data), rc, RunConfig(), privacy, setup=None, state=None,
                run_id="r")
    assert len(privacy.ledger.entries) == 1


def test_train_release_is_the_gradient_sum_and_validate_the_confusion(tmp_path, tiny_data):
    from client.distributed_round import release, withheld
    from client.site import initial_state
    from common.config import ModelConfig
    from common.consortium_setup import ConsortiumSetup

    schema = tiny_data.schema
    cfg = RunConfig(model=ModelConfig(d_model=8, n_heads=2, n_layers=1, tokens_per_modality=1,
                                      dropout=0.0, attention_dropout=0.0,
                                      modality_dropout=0.0), state_dir=str(tmp_path))
    setup = ConsortiumSetup(schema, Standardizer.for_each_patient(schema),
                            np.ones(schema.n_classes, dtype=np.float32),
                            np.full(schema.n_classes, 1.0 / schema.n_classes))
    state = initial_state(setup, cfg)
    plan = NoisePlan.calibrate(8.0, 1e-5, 3, 1.0, 3)
    privacy = _privacy(tmp_path, 8.0)
    first = release(_site(tiny_data), RoundConfig(task=TRAIN_TASK, noise_plan=plan,
                                                  server_round=1),
                    cfg, privacy, setup=setup, state=state, run_id="r")
    shapes = [tuple(v.shape) for v in state.values()]
    assert [v.shape for v in first.vector] == shapes
    for v in first.vector:
        np.testing.assert_array_equal(v, np.rint(v))
    assert [v.shape for v in withheld(RoundConfig(task=TRAIN_TASK), [v.numpy() for v in
                                                                     state.values()],
                                      schema.n_classes)] == shapes
    final = release(_site(tiny_data), RoundConfig(task=VALIDATE_TASK, noise_plan=plan,
                                                  server_round=3),
                    cfg, privacy, setup=setup, state=state, run_id="r")
    assert [v.shape for v in final.vector] == [(schema.n_classes ** 2,)]
    assert final.epsilon > first.epsilon
    assert [e.noise_multiplier for e in privacy.ledger.entries] == [
        plan.gradient_noise, plan.validation_noise]


# --- e2e: every message a virtual hospital sends in a distributed-DP run -------------

# What a site may send in clear in a distributed-DP run: its name, refusals, and what its
# own ledger says (epsilon, delta): public numbers, not functions of its patients.
ALLOWED_METRICS = {"num-examples", "epsilon", "delta", "refused",
                   "num_examples"}  # Flower's legacy fit result: the SecAgg+ weight


@pytest.fixture(scope="module")
def distributed_run(bundled_dir_module, tmp_path_factory):
    out = tmp_path_factory.mktemp("dist") / "run"
    cfg = RunConfig.preset("distributed", data=str(bundled_dir_module("brca")),
                           partition="iid", sites=3, rounds=2, epsilon=8.0, seed=0,
                           out=str(out))
    return audited_simulation(cfg, tmp_path_factory.mktemp("audit"))


@pytest.mark.e2e
def test_no_site_sends_a_per_site_value_in_clear(distributed_run):
    _, messages = distributed_run
    kinds = {m["type"] for m in messages}
    assert "query" in kinds and "train" in kinds
    assert "evaluate" not in kinds  # validation travels only as a noised sum
    for m in messages:
        for name, record in m["records"].items():
            assert name not in ("arrays", "stats"), f"{m['type']} reply sends {name} in clear"
            if record["kind"] == "ArrayRecord":
                # SecAgg+ strips the fit result's arrays: only the masked vector travels
                assert record["values"] == 0, f"{m['type']} reply sends arrays in {name}"
            if record["kind"] == "MetricRecord":
                extra = set(record["values"]) - ALLOWED_METRICS
                assert not extra, f"{m['type']} reply sends {sorted(extra)} in clear"
                # Every reply counts once; a site's patient count would be a per-site value.
                for key in ("num-examples", "num_examples"):
                    assert record["values"].get(key, 1) in (0, 1), (name, record)


@pytest.mark.e2e
def test_distributed_run_accounts_every_release(distributed_run):
    run_dir, _ = distributed_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    plan = NoisePlan(**metrics["distributed_dp"]["noise_plan"])
    assert plan.min_sites == 3 and plan.rounds == 2
    spent = metrics["per_site_epsilon"]
    assert len(spent) == 3
    assert all(0 < eps <= 8.0 + 1e-9 for eps in spent.values())
    from client.privacy import PrivacyLedger, ledger_path

    for site in spent:
        ledger = PrivacyLedger.open(ledger_path(run_dir / "site-state" / site))
        noises = sorted(e.noise_multiplier for e in ledger.entries)
        # the class counts, the centre and the class sums (the default centroid model),
        # the final model's validation
        assert plan.centre_round
        assert noises == sorted([plan.count_noise, plan.centre_noise, plan.gradient_noise,
                                 plan.validation_noise])
        assert all(e.delta == pytest.approx(plan.delta) for e in ledger.entries)
        assert ledger.epsilon(plan.delta) == pytest.approx(8.0, abs=2e-3)
        assert spent[site] == pytest.approx(ledger.epsilon(plan.delta))  # the run's record
    # Only the final model is validated, and it is the run's model.
    assert [r.get("val") is not None for r in metrics["rounds"]] == [False, True]
    assert metrics["best_round"] == 2


@pytest.mark.e2e
def test_low_epsilon_run_releases_both_centroid_sums_in_the_projection(bundled_dir_module,
                                                                       tmp_path: Path):
    """At epsilon 1 the noise would swamp BRCA's rarest class in 720 features: the centre
    and the class sums travel in the seeded projection, and the bundle scores there."""
    from common.bundle import load_bundle
    from common.centroid import projection_matrix
    from common.dataset import load_dataset
    from simulations.runner import simulate

    out = tmp_path / "run"
    cfg = RunConfig.preset("distributed", data=str(bundled_dir_module("brca")),
                           partition="iid", sites=3, epsilon=1.0, seed=4, out=str(out))
    out = simulate(cfg, compare=False, show_progress=False)
    plan = NoisePlan(**json.loads((out / "metrics.json").read_text())["distributed_dp"]
                     ["noise_plan"])
    assert (plan.projection, plan.projection_seed) == (32, 4)
    state = torch.load(out / "model" / "weights.pt")
    assert [int(v) for v in state["projection"]] == [32, 4]
    p = projection_matrix(32, state["centre"].shape[0], 4)
    centre = state["centre"].double().numpy()
    # The shortest centre with the released projected mean: it lies in P's row space.
    np.testing.assert_allclose(p.T @ np.linalg.solve(p @ p.T, p @ centre), centre, atol=1e-6)
    proba = load_bundle(out / "model").predict_proba(load_dataset(bundled_dir_module("brca")))
    assert np.isfinite(proba).all() and len(set(proba.argmax(axis=1))) >= 3
