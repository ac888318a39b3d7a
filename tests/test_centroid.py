"""The class-centroid model: its noise plan, the sites' sums, the coordinator's fit, and
its bundle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord
from scripted_grid import synthetic_data

from common.centroid import CentroidClassifier, fit_centroids
from common.config import CENTROID_KIND, CENTROID_RADIUS, ModelConfig, RunConfig
from common.distributed_dp import CENTRE_SHARE, NoisePlan
from common.model import ModelSpec, build_model
from common.preprocessing import Standardizer
from common.protocol import TRAIN_TASK, RoundConfig, to_array
from common.training import tensors


@pytest.fixture
def data():
    out = synthetic_data(40, seed=5)
    out.mask[:6, 1] = False  # a few patients lack a modality
    return out


def _model(schema) -> CentroidClassifier:
    model = build_model(ModelSpec.for_schema(ModelConfig(kind=CENTROID_KIND), schema))
    assert isinstance(model, CentroidClassifier)
    return model


def _inputs(data):
    return tensors(Standardizer.for_each_patient(data.schema).transform(data))


@pytest.mark.parametrize("epsilon", [1.0, 8.0])
def test_centre_round_plan_spends_exactly_the_budget(epsilon):
    plan = NoisePlan.calibrate(epsilon, 1e-5, 2, CENTROID_RADIUS, 5, centre_round=True)
    assert plan.epsilon_spent() == pytest.approx(epsilon, abs=2e-3)
    assert plan.round_noise(1) == plan.centre_noise and plan.round_noise(2) == plan.gradient_noise
    # The two training releases split the gradients' share: 1/sigma^2 adds up.
    plain = NoisePlan.calibrate(epsilon, 1e-5, 1, CENTROID_RADIUS, 5)
    assert plan.centre_noise ** -2 + plan.gradient_noise ** -2 == pytest.approx(
        plain.gradient_noise ** -2)
    assert plan.gradient_noise ** -2 / plan.centre_noise ** -2 == pytest.approx(
        (0.85 - CENTRE_SHARE) / CENTRE_SHARE)
    with pytest.raises(ValueError, match="rounds >= 2"):
        NoisePlan.calibrate(epsilon, 1e-5, 1, CENTROID_RADIUS, 5, centre_round=True)


def test_patient_vectors_are_bounded_and_missing_modalities_do_not_deviate(data):
    model = _model(data.schema)
    x, mask, _ = _inputs(data)
    z = model.patient_vectors(x, mask)
    norms = z.norm(dim=1)
    assert float(norms.max()) <= 1.0 + 1e-5
    complete = mask.all(dim=1)
    assert complete.any() and not complete.all()
    # Per-patient standardized: a patient with every modality has norm 1 exactly.
    np.testing.assert_allclose(norms[complete].numpy(), 1.0, atol=1e-3)
    model.centre.fill_(0.05)
    model.radius.fill_(0.3)
    u = model.deviations(x, mask)
    assert float(u.norm(dim=1).max()) <= 0.3 + 1e-5
    missing = ~mask.bool()[:, model.feature_modality]
    assert (u[missing] == 0).all()


def test_fit_without_noise_gives_the_class_means_and_nearest_centroid_rule():
    rng = np.random.default_rng(0)
    dev = rng.normal(size=(60, 7))
    y = rng.integers(0, 3, size=60)
    sums = np.stack([dev[y == c].sum(axis=0) for c in range(3)])
    counts = np.bincount(y, minlength=3).astype(float)
    weight, bias = fit_centroids(sums, counts, noise_std=0.0)
    means = sums / counts[:, None]
    np.testing.assert_allclose(weight, means)
    scores = dev @ weight.T + bias
    nearest = np.argmin(((dev[:, None, :] - means[None]) ** 2).sum(axis=2), axis=1)
    np.testing.assert_array_equal(scores.argmax(axis=1), nearest)
    # With noise, each centroid shrinks by the share of its energy the noise explains.
    noise_std = 2.0
    noisy_w, noisy_b = fit_centroids(sums, counts, noise_std=noise_std)
    factor = np.maximum(0, 1 - 7 * (noise_std / counts) ** 2 / (means ** 2).sum(axis=1))
    np.testing.assert_allclose(noisy_w, means * factor[:, None])
    np.testing.assert_allclose(noisy_b, -0.5 * (noisy_w ** 2).sum(axis=1))
    assert (factor < 1).all()
    # A centroid that is all noise sits at the centre: score 0 for every patient.
    pure_noise, _ = fit_centroids(sums, counts, noise_std=1e3)
    assert (pure_noise == 0).all()


def test_site_releases_the_feature_sum_then_the_class_sums(tmp_path, data):
    from client.distributed_round import centroid_sums, release
    from client.dp import site_privacy
    from client.site import Site, initial_state
    from common.consortium_setup import ConsortiumSetup

    schema = data.schema
    cfg = RunConfig(state_dir=str(tmp_path))
    assert cfg.model.kind == CENTROID_KIND
    setup = ConsortiumSetup(schema, Standardizer.for_each_patient(schema),
                            np.ones(schema.n_classes, dtype=np.float32),
                            np.full(schema.n_classes, 1.0 / schema.n_classes))
    state = initial_state(setup, cfg)
    plan = NoisePlan.calibrate(8.0, 1e-5, 2, CENTROID_RADIUS, 3, centre_round=True)
    model = _model(schema)
    x, mask, y = _inputs(data)
    first, sens1 = centroid_sums(model, x, mask, y, plan, 1)
    assert set(first) == {"centre"} and sens1 == 1.0
    np.testing.assert_allclose(first["centre"].numpy(),
                               model.patient_vectors(x, mask).sum(dim=0).numpy(), rtol=1e-5)
    second, sens2 = centroid_sums(model, x, mask, y, plan, 2)
    assert set(second) == {"head.weight"} and sens2 == CENTROID_RADIUS
    dev = model.deviations(x, mask)
    for c in range(schema.n_classes):
        np.testing.assert_allclose(second["head.weight"][c].numpy(),
                                   dev[y == c].sum(dim=0).numpy(), rtol=1e-4, atol=1e-6)
    # In integer units (what SecAgg+ carries): each patient's row rounded, then summed.
    from common.discrete_dp import integer_scale

    units, _ = centroid_sums(model, x, mask, y, plan, 2, in_units=True)
    scale = integer_scale(CENTROID_RADIUS)
    for c in range(schema.n_classes):
        rows = np.rint(dev[y == c].double().numpy() * scale)
        np.testing.assert_array_equal(units["head.weight"][c].numpy(), rows.sum(axis=0))
    np.testing.assert_allclose(units["head.weight"].numpy() / scale,
                               second["head.weight"].numpy(), atol=0.5 * len(y) / scale)

    privacy = site_privacy("h1", 10, {}, cfg)
    site = Site("h1", data, data)
    for rnd in (1, 2):
        out = release(site, RoundConfig(task=TRAIN_TASK, noise_plan=plan, server_round=rnd),
                      cfg, privacy, setup=setup, state=state, run_id="r")
        assert [v.shape for v in out.vector] == [tuple(v.shape) for v in state.values()]
    assert [e.noise_multiplier for e in privacy.ledger.entries] == [
        plan.centre_noise, plan.gradient_noise]


def test_coordinator_takes_the_centre_then_the_centroids(data):
    from server.rounds.distributed import CentroidFit

    model = _model(data.schema)
    state = model.state_dict()
    arrays = ArrayRecord({k: to_array(v.numpy()) for k, v in state.items()})
    plan = NoisePlan.calibrate(8.0, 1e-5, 2, 0.4, 3, centre_round=True)
    counts = np.array([10.0, 20.0, 30.0])[: data.schema.n_classes]
    fit = CentroidFit(plan, counts, float(counts.sum()))
    released = [np.full(tuple(v.shape), 3.0) for v in state.values()]
    after_centre = fit.aggregate(arrays, released, 1, sites=3)
    np.testing.assert_allclose(after_centre["centre"].numpy(), 3.0 / counts.sum())
    assert (after_centre["head.weight"].numpy() == 0).all()  # untouched in round 1
    after = fit.aggregate(after_centre, released, 2, sites=3)
    weight, bias = fit_centroids(np.full(state["head.weight"].shape, 3.0), counts,
                                 plan.gradient_noise * 0.4)
    assert np.abs(weight).max() > 0  # the sums here carry more than the noise
    np.testing.assert_allclose(after["head.weight"].numpy(), weight, rtol=1e-6)
    np.testing.assert_allclose(after["head.bias"].numpy(), bias, rtol=1e-5)
    np.testing.assert_allclose(after["radius"].numpy(), 0.4)
    np.testing.assert_allclose(after["centre"].numpy(), after_centre["centre"].numpy())


def test_projection_is_chosen_when_noise_swamps_the_rarest_class():
    from common.centroid import projection_for
    from common.config import CENTROID_PROJECTION

    counts = np.array([200.0, 20.0, 80.0])
    # F * (sigma / n_min)^2 against 2 * radius^2 (0.5): 720 * (0.9 / 20)^2 = 1.46 > 0.5.
    assert projection_for(720, 0.9, counts, 0.5) == CENTROID_PROJECTION
    assert projection_for(720, 0.2, counts, 0.5) == 0  # 0.07: the centroids stand out
    assert projection_for(720, 0.0, counts, 0.5) == 0  # no noise, nothing to gain
    assert projection_for(40, 5.0, counts, 0.5) == 0  # too few features to project


def test_projected_class_sums_give_the_centroids_of_the_projected_deviations(data):
    from dataclasses import replace

    from client.distributed_round import centroid_sums
    from common.centroid import centroid_weights, clip_rows, projection_matrix

    model = _model(data.schema)
    x, mask, y = _inputs(data)
    n_features = model.centre.shape[0]
    k = 3  # of 5 features
    plan = replace(NoisePlan.calibrate(8.0, 1e-5, 2, CENTROID_RADIUS, 3, centre_round=True),
                   projection=k, projection_seed=7)
    sums, sensitivity = centroid_sums(model, x, mask, y, plan, 2)
    released = sums["head.weight"].double().numpy()
    assert released.shape == (data.schema.n_classes, n_features) and sensitivity == plan.clip
    assert (released[:, k:] == 0).all()  # only the projection's columns carry data
    p = projection_matrix(k, n_features, 7)
    np.testing.assert_array_equal(p, projection_matrix(k, n_features, 7))  # seed alone
    projected = clip_rows(model.deviations(x, mask).double() @ torch.from_numpy(p).T,
                          plan.clip)
    assert float(projected.norm(dim=1).max()) <= plan.clip + 1e-9
    counts = np.bincount(y.numpy(), minlength=data.schema.n_classes).astype(float)
    weight, bias = centroid_weights(released, counts, 0.0, k, 7)
    centroids, expected_bias = fit_centroids(released[:, :k], counts, 0.0)
    for c in range(data.schema.n_classes):
        np.testing.assert_allclose(centroids[c], projected[y == c].mean(dim=0).numpy(),
                                   rtol=1e-5, atol=1e-6)
    # The model's weights act on the unprojected deviations: u . (M P) = (P u) . M.
    u = model.deviations(x, mask).double().numpy()
    np.testing.assert_allclose(u @ weight.T, (u @ p.T) @ centroids.T, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(bias, expected_bias)


def test_distributed_presets_fit_centroids_in_two_rounds_or_train_other_kinds():
    default = RunConfig()
    assert (default.model.kind, default.rounds, default.strategy) == (CENTROID_KIND, 2, "fedavg")
    assert default.max_grad_norm == CENTROID_RADIUS
    mmt = RunConfig.preset("distributed", model_kind="mmt")
    assert mmt.model.kind == "mmt" and mmt.rounds > 2 and mmt.strategy == "fedavgm"
    from strategies import check_combination

    check_combination(default)
    with pytest.raises(ValueError, match="2 rounds"):
        check_combination(RunConfig(rounds=5))
    with pytest.raises(ValueError, match="fedavg"):
        check_combination(RunConfig(strategy="fedavgm"))
    check_combination(RunConfig(rounds=5, model=ModelConfig(kind="mmt")))


def test_centroid_bundle_round_trips_and_predicts_without_a_modality(tmp_path: Path, data):
    from common.bundle import load_bundle, save_bundle

    model = _model(data.schema)
    x, mask, y = _inputs(data)
    with torch.no_grad():
        model.centre.copy_(model.patient_vectors(x, mask).mean(dim=0))
        dev = model.deviations(x, mask).numpy()
        sums = np.stack([dev[y.numpy() == c].sum(axis=0) for c in range(data.schema.n_classes)])
        weight, bias = fit_centroids(sums, np.bincount(y.numpy()), 0.0)
        model.head.weight.copy_(torch.from_numpy(weight))
        model.head.bias.copy_(torch.from_numpy(bias))
    standardizer = Standardizer.for_each_patient(data.schema)
    directory = save_bundle(tmp_path / "model", model_config=model.spec.config,
                            schema=data.schema, standardizer=standardizer,
                            state_dict=model.state_dict(), lineage={})
    bundle = load_bundle(directory)
    np.testing.assert_allclose(bundle.predict_proba(data),
                               torch.softmax(model(x, mask), dim=1).detach().numpy(),
                               atol=1e-6)
    without = data.copy()
    without.mask[:, 0] = False
    proba = bundle.predict_proba(without)
    assert np.isfinite(proba).all()


def test_projected_centre_is_released_in_the_projection_and_mapped_back(data):
    from dataclasses import replace

    from client.distributed_round import centroid_sums
    from common.centroid import centre_from_sum, clip_rows, projection_matrix

    model = _model(data.schema)
    x, mask, y = _inputs(data)
    n_features = model.centre.shape[0]
    k, seed = 3, 11
    plan = replace(NoisePlan.calibrate(1.0, 1e-5, 2, CENTROID_RADIUS, 3, centre_round=True),
                   projection=k, projection_seed=seed)
    first, sensitivity = centroid_sums(model, x, mask, y, plan, 1)
    released = first["centre"].double().numpy()
    assert sensitivity == 1.0 and (released[k:] == 0).all()
    p = projection_matrix(k, n_features, seed)
    rows = clip_rows(model.patient_vectors(x, mask).double() @ torch.from_numpy(p).T, 1.0)
    assert float(rows.norm(dim=1).max()) <= 1.0 + 1e-9  # the sensitivity survives
    np.testing.assert_allclose(released[:k], rows.sum(dim=0).numpy(), rtol=1e-5)
    centre = centre_from_sum(released, len(y), k, seed)
    np.testing.assert_allclose(p @ centre, released[:k] / len(y), atol=1e-9)
    np.testing.assert_allclose(p @ centre, rows.mean(dim=0).numpy(), rtol=1e-5)
    # Unprojected: the plain mean.
    np.testing.assert_allclose(centre_from_sum(released, 4.0), released / 4.0)


def test_projected_model_clips_and_scores_in_the_projection(tmp_path: Path, data):
    from common.bundle import load_bundle, save_bundle
    from common.centroid import centroid_weights, clip_rows, projection_matrix

    model = _model(data.schema)
    x, mask, y = _inputs(data)
    n_features, k, seed = model.centre.shape[0], 3, 4
    p = torch.from_numpy(projection_matrix(k, n_features, seed)).float()
    with torch.no_grad():
        model.centre.copy_(model.patient_vectors(x, mask).mean(dim=0))
        model.radius.fill_(0.05)  # small enough that the clip binds
        unprojected = model.deviations(x, mask)
        model.projection.copy_(torch.tensor([k, seed]))
        u = model.deviations(x, mask)
        raw = (model.patient_vectors(x, mask) - model.centre) * model._present(x, mask)
        # Clipped by the projected length, not the full one.
        np.testing.assert_allclose((u @ p.T).numpy(), clip_rows(raw @ p.T, 0.05).numpy(),
                                   atol=1e-6)
        assert not torch.allclose(u, unprojected)
        projected = np.zeros((data.schema.n_classes, n_features))
        for c in range(data.schema.n_classes):
            projected[c, :k] = (u @ p.T)[y == c].sum(dim=0).numpy()
        weight, bias = centroid_weights(projected, np.bincount(y.numpy()), 0.0, k, seed)
        model.head.weight.copy_(torch.from_numpy(weight))
        model.head.bias.copy_(torch.from_numpy(bias))
        logits = model(x, mask)
        centroids = weight @ np.linalg.pinv(p.double().numpy())  # M from W = M P
        expected = (u @ p.T).double().numpy() @ centroids.T + bias
        np.testing.assert_allclose(logits.double().numpy(), expected, atol=1e-4)
    standardizer = Standardizer.for_each_patient(data.schema)
    directory = save_bundle(tmp_path / "model", model_config=model.spec.config,
                            schema=data.schema, standardizer=standardizer,
                            state_dict=model.state_dict(), lineage={})
    np.testing.assert_allclose(load_bundle(directory).predict_proba(data),
                               torch.softmax(logits, dim=1).numpy(), atol=1e-6)
    # A state written before the projection was stored loads as unprojected.
    older = {key: v for key, v in model.state_dict().items() if key != "projection"}
    fresh = _model(data.schema)
    fresh.load_state_dict(older)
    assert int(fresh.projection[0]) == 0
