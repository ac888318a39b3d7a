"""Tests for strategies: FedAvg/FedProx aggregation, update vetting and pooled metrics."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from sklearn.metrics import confusion_matrix, f1_score

from common.protocol import ARRAYS, CONFIG, METRICS, NUM_EXAMPLES, SITE, VAL_EXAMPLES
from strategies import build_strategy
from strategies.guard import update_problem
from strategies.metrics import macro_f1, pool_validation

SHAPES = {"layer.weight": (3, 2), "layer.bias": (3,)}


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """Flower stamps every new Message with the process's task identity: fake one."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 7)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)


class FakeGrid:
    """Just enough of flwr's Grid for ``configure_train`` (sample_nodes)."""

    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = node_ids

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)


def weights(value: float, dtype=np.float32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(int(value * 1000) % 2**32)
    return {k: (value + rng.normal(size=s)).astype(dtype) for k, s in SHAPES.items()}


def array_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def reply(node: int, arrays: dict[str, np.ndarray], n, site: str | None = None) -> Message:
    request = Message(content=RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)
    content = RecordDict({
        ARRAYS: array_record(arrays),
        METRICS: MetricRecord({NUM_EXAMPLES: n, "train-loss": float(node)}),
        SITE: ConfigRecord({"name": site or f"site-{node}"}),
    })
    return Message(content=content, reply_to=request)


def error_reply(node: int, reason: str) -> Message:
    request = Message(content=RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)
    return Message(Error(code=1, reason=reason), reply_to=request)


def weighted_average(parts: list[tuple[dict[str, np.ndarray], float]]) -> dict[str, np.ndarray]:
    total = sum(n for _, n in parts)
    return {
        k: sum(a[k].astype(np.float64) * n for a, n in parts) / total for k in SHAPES
    }


def assert_arrays_close(record: ArrayRecord, expected: dict[str, np.ndarray]) -> None:
    assert set(record.keys()) == set(expected)
    for k, v in expected.items():
        assert np.allclose(record[k].numpy(), v, atol=1e-6), k


def configured(strategy, nodes=(1, 2, 3, 4, 5, 6)) -> list[Message]:
    """Run configure_train so the guard knows the global model's arrays."""
    return list(strategy.configure_train(
        1, array_record(weights(0.0)), ConfigRecord({"lr": 0.1}), FakeGrid(list(nodes))
    ))


# --- aggregation -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fedavg", "fedprox"])
def test_aggregation_is_the_num_examples_weighted_mean(name):
    strategy = build_strategy(name, fraction_train=1.0, min_sites=2, proximal_mu=0.1)
    parts = [(weights(1.0), 10), (weights(2.0), 30), (weights(-4.0), 60)]
    replies = [reply(k + 1, a, n) for k, (a, n) in enumerate(parts)]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is not None
    assert_arrays_close(arrays, weighted_average(parts))
    # Sanity: the weighting matters (differs from a plain mean).
    plain = weighted_average([(a, 1) for a, _ in parts])
    assert not np.allclose(arrays["layer.bias"].numpy(), plain["layer.bias"])
    assert metrics is not None
    assert metrics["train-loss"] == pytest.approx((1 * 10 + 2 * 30 + 3 * 60) / 100)
    assert strategy.rejected == []


def test_fedavgm_applies_server_momentum_to_the_averaged_update():
    strategy = build_strategy("fedavgm", fraction_train=1.0, min_sites=2, server_momentum=0.5)
    configured(strategy, nodes=(1, 2))  # the global weights: weights(0.0)
    start = {k: v.astype(np.float64) for k, v in weights(0.0).items()}
    parts = [(weights(1.0), 10), (weights(2.0), 30)]
    first, _ = strategy.aggregate_train(1, [reply(k + 1, a, n) for k, (a, n) in enumerate(parts)])
    mean = weighted_average(parts)
    assert_arrays_close(first, mean)  # no momentum yet: plain FedAvg
    # Round 2: the sites send the same weights again; the step now carries momentum.
    second, _ = strategy.aggregate_train(2, [reply(k + 1, a, n)
                                             for k, (a, n) in enumerate(parts)])
    gradient_1 = {k: start[k] - mean[k] for k in SHAPES}
    gradient_2 = {k: mean[k] - mean[k] for k in SHAPES}  # zero: already at the mean
    expected = {k: mean[k] - (0.5 * gradient_1[k] + gradient_2[k]) for k in SHAPES}
    assert_arrays_close(second, expected)


def test_unknown_strategy_is_rejected_naming_it():
    with pytest.raises(ValueError, match="'fedsgd'"):
        build_strategy("fedsgd", fraction_train=1.0, min_sites=2)


def test_fedprox_configure_train_sends_proximal_mu():
    strategy = build_strategy("fedprox", fraction_train=1.0, min_sites=2, proximal_mu=0.25)
    messages = configured(strategy, nodes=(11, 12, 13))
    assert sorted(m.metadata.dst_node_id for m in messages) == [11, 12, 13]
    for m in messages:
        assert m.metadata.message_type == MessageType.TRAIN
        config = m.content[CONFIG]
        assert config["proximal-mu"] == pytest.approx(0.25)
        assert config["server-round"] == 1
        assert config["lr"] == pytest.approx(0.1)
        assert_arrays_close(m.content[ARRAYS], weights(0.0))


def test_fedavg_configure_train_sends_no_proximal_mu():
    strategy = build_strategy("fedavg", fraction_train=1.0, min_sites=2, proximal_mu=0.25)
    for m in configured(strategy, nodes=(1, 2)):
        assert "proximal-mu" not in m.content[CONFIG]


def test_fraction_train_samples_a_subset():
    strategy = build_strategy("fedavg", fraction_train=0.5, min_sites=2)
    messages = configured(strategy, nodes=tuple(range(1, 11)))
    targets = {m.metadata.dst_node_id for m in messages}
    assert len(targets) == 5 and targets <= set(range(1, 11))


# --- update vetting --------------------------------------------------------------------


def test_guard_rejects_bad_updates_and_averages_the_rest():
    strategy = build_strategy("fedavg", fraction_train=1.0, min_sites=2)
    configured(strategy)
    good = [(weights(1.0), 20), (weights(3.0), 60)]
    nan = weights(2.0)
    nan["layer.weight"][0, 1] = np.nan
    wrong_shape = weights(2.0)
    wrong_shape["layer.bias"] = np.zeros(4, dtype=np.float32)
    missing = weights(2.0)
    del missing["layer.bias"]
    inf = weights(2.0)
    inf["layer.bias"][0] = np.inf
    replies = [
        reply(1, good[0][0], good[0][1]),
        reply(2, nan, 1000, site="nan-site"),
        reply(3, wrong_shape, 1000, site="shape-site"),
        reply(4, missing, 1000, site="missing-site"),
        reply(5, weights(2.0), 0, site="empty-site"),
        reply(6, good[1][0], good[1][1]),
        reply(7, inf, 1000, site="inf-site"),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert_arrays_close(arrays, weighted_average(good))

    reasons = {r["site"]: r["reason"] for r in strategy.rejected}
    assert set(reasons) == {"nan-site", "shape-site", "missing-site", "empty-site", "inf-site"}
    assert "layer.weight" in reasons["nan-site"] and "NaN" in reasons["nan-site"]
    assert "layer.bias" in reasons["shape-site"]
    assert "(4,)" in reasons["shape-site"] and "(3,)" in reasons["shape-site"]
    assert "parameter names" in reasons["missing-site"]
    assert NUM_EXAMPLES in reasons["empty-site"] and "0" in reasons["empty-site"]
    assert "layer.bias" in reasons["inf-site"]
    nodes = {r["site"]: r["node"] for r in strategy.rejected}
    assert nodes["nan-site"] == 2 and nodes["empty-site"] == 5


def test_guard_rejects_wrong_dtype():
    strategy = build_strategy("fedavg", fraction_train=1.0, min_sites=2)
    configured(strategy)
    replies = [reply(1, weights(1.0), 5), reply(2, weights(1.0, dtype=np.float64), 5, "f64"),
               reply(3, weights(2.0), 5)]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert [r["site"] for r in strategy.rejected] == ["f64"]
    assert "float64" in strategy.rejected[0]["reason"]
    assert_arrays_close(arrays, weighted_average([(weights(1.0), 5), (weights(2.0), 5)]))


def test_guard_without_reference_still_rejects_nan():
    strategy = build_strategy("fedprox", fraction_train=1.0, min_sites=2, proximal_mu=0.1)
    good = [(weights(1.0), 10), (weights(5.0), 30)]
    nan = weights(2.0)
    nan["layer.bias"][:] = np.nan
    replies = [reply(1, good[0][0], 10), reply(2, nan, 50, "nan-site"),
               reply(3, good[1][0], 30)]
    arrays, _ = strategy.aggregate_train(3, replies)
    assert [r["site"] for r in strategy.rejected] == ["nan-site"]
    assert "NaN" in strategy.rejected[0]["reason"]
    assert_arrays_close(arrays, weighted_average(good))


def test_guard_rejects_error_replies_and_all_bad_gives_nothing():
    strategy = build_strategy("fedavg", fraction_train=1.0, min_sites=2)
    configured(strategy)
    bad = weights(1.0)
    bad["layer.weight"][:] = np.nan
    arrays, metrics = strategy.aggregate_train(
        2, [error_reply(1, "out of memory"), reply(2, bad, 10)]
    )
    assert arrays is None and metrics is None
    assert len(strategy.rejected) == 2
    assert "out of memory" in strategy.rejected[0]["reason"]


def test_update_problem_accepts_a_good_reply():
    ref = array_record(weights(0.0))
    assert update_problem(reply(1, weights(1.0), 12), ref) is None
    assert update_problem(reply(1, weights(1.0), 12.5), None) is None
    assert "num-examples" in update_problem(reply(1, weights(1.0), -3), ref)


# --- pooled validation metrics ---------------------------------------------------------


def val_record(y_true: list[int], y_pred: list[int], loss_sum: float, n_classes: int):
    cm = confusion_matrix(y_true, y_pred, labels=list(range(n_classes)))
    return RecordDict({METRICS: MetricRecord({
        NUM_EXAMPLES: len(y_true), VAL_EXAMPLES: len(y_true), "val-loss-sum": loss_sum,
        "confusion": [int(v) for v in cm.ravel()],
    })})


def test_pool_validation_sums_sites_into_pooled_metrics():
    sites = [
        ([0, 0, 1, 2, 2], [0, 1, 1, 2, 0], 2.5),
        ([1, 1, 1], [1, 1, 2], 0.9),
        ([0, 2, 2, 0, 1, 1, 0], [0, 2, 2, 2, 0, 1, 0], 4.2),
    ]
    n_classes = 4  # class 3 never occurs: excluded from macro F1, as in sklearn
    pooled = pool_validation([val_record(t, p, s, n_classes) for t, p, s in sites])
    y_true = [v for t, _, _ in sites for v in t]
    y_pred = [v for _, p, _ in sites for v in p]
    n = len(y_true)
    assert pooled[VAL_EXAMPLES] == n
    assert pooled[NUM_EXAMPLES] == n
    assert pooled["val-loss"] == pytest.approx((2.5 + 0.9 + 4.2) / n)
    expected_cm = confusion_matrix(y_true, y_pred, labels=list(range(n_classes)))
    assert pooled["confusion"] == [int(v) for v in expected_cm.ravel()]
    assert pooled["val-accuracy"] == pytest.approx(np.mean(np.equal(y_true, y_pred)))
    assert pooled["val-f1-macro"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    # Pooled F1 is not the mean of per-site F1s.
    per_site = np.mean([f1_score(t, p, average="macro") for t, p, _ in sites])
    assert pooled["val-f1-macro"] != pytest.approx(per_site)


def test_pool_validation_of_nothing_is_empty():
    out = pool_validation([])
    assert out[VAL_EXAMPLES] == 0 and "val-f1-macro" not in out


def test_macro_f1_by_hand():
    cm = np.array([[3, 1, 0], [0, 2, 0], [1, 1, 1]])
    f1 = [2 * 3 / (4 + 4), 2 * 2 / (2 + 4), 2 * 1 / (3 + 1)]
    assert macro_f1(cm) == pytest.approx(np.mean(f1))
    with_absent = np.zeros((4, 4), dtype=int)
    with_absent[:3, :3] = cm
    assert macro_f1(with_absent) == pytest.approx(np.mean(f1))
    assert macro_f1(np.zeros((2, 2))) == 0.0


# --- central DP -------------------------------------------------------------------------

def _central(noise: float, clip: float, seed: int = 0):
    return build_strategy("central-dp", fraction_train=1.0, min_sites=2,
                          noise_multiplier=noise, clipping_norm=clip, seed=seed)


def _offset(reference: dict[str, np.ndarray], direction: dict[str, np.ndarray],
            norm: float) -> dict[str, np.ndarray]:
    length = np.sqrt(sum(float((d.astype(np.float64) ** 2).sum()) for d in direction.values()))
    return {k: (reference[k] + norm * direction[k] / length).astype(np.float32)
            for k in reference}


def test_central_dp_clips_each_update_and_averages_equally():
    from strategies.central_dp import CentralDPFedAvg

    reference = weights(0.0)
    strategy = _central(noise=1e-12, clip=1.0)
    assert isinstance(strategy, CentralDPFedAvg)
    strategy._reference = array_record(reference)  # what configure_train remembers
    directions = [weights(1.0 + i) for i in range(3)]
    norms = [0.5, 2.0, 4.0]  # only the first is within the clipping norm
    replies = [reply(i + 1, _offset(reference, d, n), n=10 * (i + 1))
               for i, (d, n) in enumerate(zip(directions, norms, strict=True))]
    arrays, _ = strategy.aggregate_train(1, replies)
    scales = [1.0, 0.5, 0.25]  # clip / norm, capped at 1
    expected = {
        k: reference[k].astype(np.float64) + sum(
            s * (_offset(reference, d, n)[k].astype(np.float64) - reference[k])
            for s, d, n in zip(scales, directions, norms, strict=True)) / 3
        for k in SHAPES
    }  # equal weights, whatever num-examples says
    assert_arrays_close(arrays, expected)


def test_central_dp_noise_has_the_calibrated_scale():
    big = {"w": (200, 500)}
    reference = {"w": np.zeros(big["w"], dtype=np.float32)}
    strategy = _central(noise=1.5, clip=2.0, seed=3)
    strategy._reference = array_record(reference)
    same = [reply(i + 1, reference, n=5) for i in range(4)]  # zero updates: pure noise
    arrays, _ = strategy.aggregate_train(1, same)
    noise = arrays["w"].numpy()
    assert abs(noise.std() - 1.5 * 2.0 / 4) < 0.01 * (1.5 * 2.0 / 4)
    assert abs(noise.mean()) < 0.01


def test_central_dp_still_rejects_hostile_updates():
    reference = weights(0.0)
    strategy = _central(noise=1e-12, clip=10.0)
    strategy._reference = array_record(reference)
    bad = {k: np.full(SHAPES[k], np.nan, dtype=np.float32) for k in SHAPES}
    good = weights(0.5)
    arrays, _ = strategy.aggregate_train(1, [reply(1, good, n=3), reply(2, bad, n=3)])
    assert len(strategy.rejected) == 1
    assert "NaN" in strategy.rejected[0]["reason"]
    assert all(np.isfinite(v.numpy()).all() for v in arrays.values())


def test_central_epsilon_accounting_and_calibration():
    from strategies.central_dp import calibrate_central_noise, central_epsilon

    eps = [central_epsilon(z, rounds=10, delta=1e-3) for z in (0.8, 1.5, 3.0)]
    assert eps[0] > eps[1] > eps[2] > 0
    assert central_epsilon(1.5, rounds=20, delta=1e-3) > eps[1]  # more releases cost more
    z = calibrate_central_noise(8.0, 1e-3, 10)
    assert central_epsilon(z, 10, 1e-3) <= 8.0
    assert central_epsilon(z * 0.97, 10, 1e-3) > 8.0  # near-minimal noise
    with pytest.raises(ValueError, match="too small"):
        calibrate_central_noise(1e-6, 1e-3, 10)
