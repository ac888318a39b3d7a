"""Tests for strategies: the registry, aggregation, update vetting and pooled metrics."""

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

from common.config import NO_DP_DIRECTION_RATIO, ModelConfig, RunConfig
from common.metrics import macro_f1
from common.protocol import (
    ARRAYS,
    CONFIG,
    CONFUSION,
    METRICS,
    NUM_EXAMPLES,
    PROXIMAL_MU,
    SERVER_ROUND,
    SITE,
    TRAIN_LOSS,
    VAL_ACCURACY,
    VAL_EXAMPLES,
    VAL_F1_MACRO,
    VAL_LOSS,
    VAL_LOSS_SUM,
    SiteMetrics,
    refusal,
    refusal_reason,
)
from strategies import build_strategy, check_combination, strategy_for_run, strategy_names
from strategies.guard import update_problem
from strategies.registry import SPECS, aggregator_name
from strategies.validation_pooling import ValidationSummary, pool_site_metrics, pool_validation

SHAPES = {"layer.weight": (3, 2), "layer.bias": (3,)}


pytestmark = pytest.mark.usefixtures("task_identity")


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
        METRICS: SiteMetrics(num_examples=n, train_loss=float(node)).to_record(),
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


@pytest.mark.parametrize(("name", "options"), [("fedavg", {}), ("fedprox", {"proximal_mu": 0.1})])
def test_aggregation_is_the_num_examples_weighted_mean(name, options):
    strategy = build_strategy(name, fraction_train=1.0, min_sites=2, **options)
    parts = [(weights(1.0), 10), (weights(2.0), 30), (weights(-4.0), 60)]
    replies = [reply(k + 1, a, n) for k, (a, n) in enumerate(parts)]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is not None
    assert_arrays_close(arrays, weighted_average(parts))
    # Sanity: the weighting matters (differs from a plain mean).
    plain = weighted_average([(a, 1) for a, _ in parts])
    assert not np.allclose(arrays["layer.bias"].numpy(), plain["layer.bias"])
    assert metrics is not None
    assert metrics[TRAIN_LOSS] == pytest.approx((1 * 10 + 2 * 30 + 3 * 60) / 100)
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
        assert config[PROXIMAL_MU] == pytest.approx(0.25)
        assert config[SERVER_ROUND] == 1
        assert config["lr"] == pytest.approx(0.1)
        assert_arrays_close(m.content[ARRAYS], weights(0.0))


def test_fedavg_configure_train_sends_no_proximal_mu():
    strategy = build_strategy("fedavg", fraction_train=1.0, min_sites=2)
    for m in configured(strategy, nodes=(1, 2)):
        assert PROXIMAL_MU not in m.content[CONFIG]


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
    assert NUM_EXAMPLES in update_problem(reply(1, weights(1.0), -3), ref)


# --- pooled validation metrics ---------------------------------------------------------


def val_record(y_true: list[int], y_pred: list[int], loss_sum: float, n_classes: int):
    cm = confusion_matrix(y_true, y_pred, labels=list(range(n_classes)))
    return RecordDict({METRICS: MetricRecord({
        NUM_EXAMPLES: len(y_true), VAL_EXAMPLES: len(y_true), VAL_LOSS_SUM: loss_sum,
        CONFUSION: [int(v) for v in cm.ravel()],
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
    assert pooled[VAL_LOSS] == pytest.approx((2.5 + 0.9 + 4.2) / n)
    expected_cm = confusion_matrix(y_true, y_pred, labels=list(range(n_classes)))
    assert pooled[CONFUSION] == [int(v) for v in expected_cm.ravel()]
    assert pooled[VAL_ACCURACY] == pytest.approx(np.mean(np.equal(y_true, y_pred)))
    assert pooled[VAL_F1_MACRO] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    # Pooled F1 is not the mean of per-site F1s.
    per_site = np.mean([f1_score(t, p, average="macro") for t, p, _ in sites])
    assert pooled[VAL_F1_MACRO] != pytest.approx(per_site)


def test_pool_validation_of_nothing_is_empty():
    out = pool_validation([])
    assert out[VAL_EXAMPLES] == 0 and VAL_F1_MACRO not in out


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


# --- registry ---------------------------------------------------------------------------


def test_unknown_strategy_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="fedavgm") as info:
        build_strategy("fedsgd", fraction_train=1.0, min_sites=2)
    assert all(name in str(info.value) for name in SPECS)


def test_misspelled_option_is_rejected_listing_the_valid_ones():
    with pytest.raises(ValueError, match="proximal_nu") as info:
        build_strategy("fedprox", fraction_train=1.0, min_sites=2, proximal_nu=0.1)
    assert "proximal_mu" in str(info.value) and "fraction_train" in str(info.value)


def test_option_of_another_strategy_is_rejected():
    with pytest.raises(ValueError, match="server_momentum"):
        build_strategy("fedavg", fraction_train=1.0, min_sites=2, server_momentum=0.9)


def test_missing_option_is_named():
    with pytest.raises(ValueError, match=r"needs option\(s\) \['proximal_mu'\]"):
        build_strategy("fedprox", fraction_train=1.0, min_sites=2)


def test_every_option_is_fed_by_a_run_config_field_or_computed():
    fields = set(RunConfig().to_dict())
    for spec in SPECS.values():
        for source in spec.options.values():
            assert source is None or source in fields, (spec.name, source)


def test_central_dp_is_chosen_by_dp_not_by_name():
    assert "central-dp" not in strategy_names()
    with pytest.raises(ValueError, match="'central-dp' is not one of"):
        check_combination(RunConfig(strategy="central-dp"))
    assert aggregator_name(RunConfig(dp="central")) == "central-dp"


def test_unknown_strategy_in_run_config_is_refused_at_the_check():
    cfg = RunConfig(strategy="foo")  # the config alone cannot know the strategies
    with pytest.raises(ValueError, match="strategy 'foo' is not one of"):
        check_combination(cfg)


# Local DP trains models other than the class centroids with DP-SGD, under a strategy.
DP_SGD_MODEL = ModelConfig(kind="mmt")
REFUSED = [
    ({"strategy": "fedprox", "dp": "local"}, "fedprox cannot be combined with local DP"),
    ({"strategy": "fedprox", "dp": "central"}, "central DP aggregates with FedAvg"),
    ({"strategy": "fedavgm", "dp": "central"}, "central DP aggregates with FedAvg"),
    ({"strategy": "fedavgm", "dp": "none", "secagg": True}, "plain weighted mean"),
    ({"strategy": "fedavgm", "dp": "local", "secagg": True}, "plain weighted mean"),
    ({"strategy": "fedavg", "dp": "central", "secagg": True}, "central DP must clip"),
]


@pytest.mark.parametrize(("settings", "reason"), REFUSED)
def test_refused_combination_says_why_and_what_is_allowed(settings, reason):
    with pytest.raises(ValueError, match=reason) as info:
        check_combination(RunConfig(**settings, model=DP_SGD_MODEL))
    from strategies.registry import allowed_combinations

    message = str(info.value)
    assert message.endswith("Allowed: " + "; ".join(allowed_combinations()))
    assert "fedavg: --dp none/local/central" in message
    assert "fedmedian: --dp none/local, no --secagg" in message


def test_a_problem_of_the_schedule_alone_does_not_list_the_strategy_combinations():
    with pytest.raises(ValueError, match="in 2 rounds") as info:
        check_combination(RunConfig.preset("local", rounds=3))
    assert "Allowed" not in str(info.value)


def _every_combination():
    for name in ("fedavg", "fedavgm", "fedprox"):
        for dp in ("none", "local", "central"):
            for secagg in (False, True):
                yield {"strategy": name, "dp": dp, "secagg": secagg}


def test_combinations_are_refused_exactly_as_listed():
    allowed = [c for c in _every_combination() if not any(
        all(c[k] == v for k, v in refused.items()) for refused, _ in REFUSED)]
    # fedavg: 5 (all but central DP with SecAgg+), fedavgm: 2 (no SecAgg+, no central DP),
    # fedprox: 2 (no DP).
    assert len(allowed) == 9
    for settings in _every_combination():
        cfg = RunConfig(**settings, model=DP_SGD_MODEL)
        if settings in allowed:
            check_combination(cfg)
        else:
            with pytest.raises(ValueError):
                check_combination(cfg)


@pytest.mark.parametrize("settings", [
    {"strategy": "fedavg", "dp": "none"}, {"strategy": "fedavg", "dp": "local"},
    {"strategy": "fedavgm", "dp": "none", "server_momentum": 0.5},
    {"strategy": "fedprox", "dp": "none", "proximal_mu": 0.3},
    {"strategy": "fedavg", "dp": "central"},
])
def test_each_strategy_builds_from_the_run_config(settings):
    from strategies.central_dp import CentralDPFedAvg
    from strategies.fedavg import FedAvg
    from strategies.fedavgm import FedAvgM
    from strategies.fedprox import FedProx

    cfg = RunConfig(**settings, fraction_train=0.5, min_sites=3)
    computed = {"noise_multiplier": 1.25} if cfg.dp == "central" else {}
    strategy = strategy_for_run(cfg, **computed)
    expected = {"fedavg": FedAvg, "fedavgm": FedAvgM, "fedprox": FedProx,
                "central-dp": CentralDPFedAvg}[aggregator_name(cfg)]
    assert type(strategy) is expected
    assert strategy.fraction_train == 0.5 and strategy.min_train_nodes == 3
    if cfg.strategy == "fedavgm":
        assert strategy.server_momentum == 0.5
    if cfg.strategy == "fedprox":
        assert strategy.proximal_mu == 0.3
    if cfg.dp == "central":
        assert strategy.noise_multiplier == 1.25
        assert strategy.clipping_norm == cfg.max_grad_norm


def test_strategy_for_run_refuses_a_refused_combination():
    with pytest.raises(ValueError, match="fedprox cannot be combined with local DP"):
        strategy_for_run(RunConfig(strategy="fedprox", dp="local"))


def test_central_dp_run_needs_its_computed_noise():
    with pytest.raises(ValueError, match="noise_multiplier"):
        strategy_for_run(RunConfig(strategy="fedavg", dp="central"))


# --- site metrics records ----------------------------------------------------------------


def test_site_metrics_round_trip_through_a_metric_record():
    cm = np.array([[3, 1], [0, 4]], dtype=np.int64)
    sent = SiteMetrics(num_examples=40, train_loss=0.7, val_examples=8, val_loss_sum=3.2,
                       confusion=cm, epsilon=1.5, noise_multiplier=2.0, delta=1e-4)
    rec = sent.to_record()
    assert rec[CONFUSION] == [3, 1, 0, 4] and rec[VAL_LOSS_SUM] == pytest.approx(3.2)
    back = SiteMetrics.from_record(rec)
    assert np.array_equal(back.confusion, cm)
    assert back.confusion.dtype == np.int64
    back.confusion = sent.confusion
    assert back == sent


def test_site_metrics_omit_what_a_site_does_not_report():
    rec = SiteMetrics(num_examples=12, train_loss=0.4).to_record()
    assert set(rec) == {NUM_EXAMPLES, TRAIN_LOSS}
    back = SiteMetrics.from_record(rec)
    assert not back.has_validation and back.epsilon is None and not back.refused


def test_refusal_reply_carries_refused_metrics_and_its_reason():
    content = refusal("site-a", "budget spent")
    metrics = SiteMetrics.of_reply(content)
    assert metrics is not None and metrics.refused and metrics.num_examples == 0
    assert refusal_reason(content) == "budget spent"


def test_site_metrics_reject_a_non_square_confusion():
    with pytest.raises(ValueError, match="square"):
        SiteMetrics.from_record(MetricRecord({NUM_EXAMPLES: 1, VAL_EXAMPLES: 1,
                                              VAL_LOSS_SUM: 0.1, CONFUSION: [1, 0, 0]}))


def test_pool_site_metrics_of_one_site_is_its_own_summary():
    cm = np.array([[2, 1, 0], [0, 3, 0], [1, 0, 1]], dtype=np.int64)
    summary = pool_site_metrics([SiteMetrics(num_examples=8, val_examples=8, val_loss_sum=4.0,
                                             confusion=cm),
                                 SiteMetrics(num_examples=5, train_loss=0.2)])  # no validation
    assert summary is not None
    assert summary.n == 8 and summary.loss == pytest.approx(0.5)
    assert summary.accuracy == pytest.approx(6 / 8)
    assert summary.f1_macro == pytest.approx(macro_f1(cm))
    again = ValidationSummary.from_record(summary.to_record())
    assert again is not None and again.as_dict() == summary.as_dict()
    assert pool_site_metrics([SiteMetrics(num_examples=3)]) is None


def test_coordinator_refuses_a_refused_combination_before_submitting(tmp_path):
    from server.coordinator import CoordinatorConfig, CoordinatorError, prepare_run_config

    cfg = CoordinatorConfig(pki_dir=tmp_path / "pki", state_dir=tmp_path / "state",
                            run_name="r", run_config={"strategy": "fedprox", "dp": "local"})
    with pytest.raises(CoordinatorError, match="fedprox cannot be combined with local DP"):
        prepare_run_config(cfg)
    assert not (tmp_path / "state" / "runs" / "r").exists()  # nothing submitted


# --- robust aggregation and server optimizers --------------------------------------------

ROBUST = {"fedmedian": {}, "trimmedavg": {"trim_fraction": 0.25},
          "krum": {"malicious_sites": 2, "krum_select": 4},
          "bulyan": {"malicious_sites": 1}}
OPTIMIZERS = {"fedadam": {"server_lr": 0.01, "server_tau": 1e-3},
              "fedyogi": {"server_lr": 0.01, "server_tau": 1e-3}}


def honest_updates(count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Weights near 1.0: the global model 0.0 moved by similar honest updates."""
    rng = np.random.default_rng(seed)
    return [{k: (1.0 + 0.05 * rng.normal(size=s)).astype(np.float32) for k, s in SHAPES.items()}
            for _ in range(count)]


def scaled(arrays: dict[str, np.ndarray], factor: float) -> dict[str, np.ndarray]:
    return {k: (v * factor).astype(np.float32) for k, v in arrays.items()}


@pytest.mark.parametrize("name", [*ROBUST, *OPTIMIZERS])
def test_each_new_strategy_builds_from_the_run_config(name):
    settings = {"trim_fraction": 0.3, "malicious_sites": 2, "krum_select": 3,
                "server_lr": 0.05, "server_tau": 0.01}
    cfg = RunConfig(strategy=name, dp="none", fraction_train=0.5, min_sites=3, **settings)
    strategy = strategy_for_run(cfg)
    assert strategy.fraction_train == 0.5 and strategy.min_train_nodes == 3
    assert strategy.vetting.max_norm_ratio == cfg.max_update_norm_ratio
    expected = {"trimmedavg": ("beta", 0.3), "krum": ("num_nodes_to_select", 3),
                "bulyan": ("num_malicious_nodes", 2), "fedadam": ("eta", 0.05),
                "fedyogi": ("tau", 0.01)}.get(name)
    if expected:
        assert getattr(strategy, expected[0]) == expected[1]


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_server_optimizer_keeps_the_global_dtypes_so_the_next_round_passes_the_guard(name):
    strategy = build_strategy(name, fraction_train=1.0, min_sites=2, **OPTIMIZERS[name])
    arrays = array_record(weights(0.0))
    for server_round in (1, 2, 3):  # each round starts from the last round's global model
        list(strategy.configure_train(server_round, arrays, ConfigRecord({"lr": 0.1}),
                                      FakeGrid([1, 2, 3, 4, 5, 6])))
        updates = honest_updates(6, seed=server_round)
        arrays, _ = strategy.aggregate_train(
            server_round, [reply(i + 1, a, 10) for i, a in enumerate(updates)])
        assert arrays is not None, f"round {server_round}: every update rejected"
        assert {a.numpy().dtype for a in arrays.values()} == {np.dtype(np.float32)}
        assert all(np.isfinite(a.numpy()).all() for a in arrays.values())


@pytest.mark.parametrize("name", list(ROBUST))
def test_robust_strategy_keeps_a_scaled_site_out_of_the_global_weights(name):
    strategy = build_strategy(name, fraction_train=1.0, min_sites=2, **ROBUST[name])
    configured(strategy)  # global model 0.0; the norm bound is off (build_strategy)
    good = honest_updates(6)
    replies = [reply(i + 1, a, 10 + i) for i, a in enumerate(good)]
    replies.append(reply(7, scaled(good[0], 1e6), 10, "hostile"))
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    for key in SHAPES:
        honest = np.stack([g[key] for g in good])
        got = arrays[key].numpy()
        assert (got >= honest.min(axis=0) - 1e-6).all() and (got <= honest.max(axis=0) + 1e-6).all()
    # Flower's robust aggregators read the arrays out of the replies: they stay whole.
    assert all(set(r.content[ARRAYS].keys()) == set(SHAPES) for r in replies)


def test_fedmedian_is_the_coordinate_wise_median():
    strategy = build_strategy("fedmedian", fraction_train=1.0, min_sites=2)
    parts = [weights(1.0), weights(2.0), weights(7.0)]
    arrays, _ = strategy.aggregate_train(1, [reply(i + 1, a, 5) for i, a in enumerate(parts)])
    assert_arrays_close(arrays, {k: np.median(np.stack([p[k] for p in parts]), axis=0)
                                 for k in SHAPES})


def test_krum_selects_the_clustered_updates():
    strategy = build_strategy("krum", fraction_train=1.0, min_sites=2, malicious_sites=1,
                              krum_select=3)
    good = honest_updates(3)
    far = {k: v + 50 for k, v in good[0].items()}
    arrays, _ = strategy.aggregate_train(
        1, [reply(i + 1, a, 10) for i, a in enumerate([*good, far])])
    assert_arrays_close(arrays, weighted_average([(g, 10) for g in good]))


def test_bulyan_tolerates_what_the_vetted_updates_allow():
    strategy = build_strategy("bulyan", fraction_train=1.0, min_sites=2, malicious_sites=1)
    good = honest_updates(6)  # f = 1 needs 7: this round runs with f = 0, the plain mean
    arrays, _ = strategy.aggregate_train(1, [reply(i + 1, a, 10) for i, a in enumerate(good)])
    assert_arrays_close(arrays, weighted_average([(g, 1) for g in good]))
    assert strategy.num_malicious_nodes == 1


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_server_optimizer_steps_towards_the_averaged_update(name):
    strategy = build_strategy(name, fraction_train=1.0, min_sites=2, **OPTIMIZERS[name])
    configured(strategy)
    start = weights(0.0)
    moved = {k: v + 1.0 for k, v in start.items()}
    arrays, _ = strategy.aggregate_train(1, [reply(1, moved, 5), reply(2, moved, 5)])
    for key in SHAPES:
        step = arrays[key].numpy() - start[key]
        # An adaptive step: about server_lr per coordinate, in the update's direction.
        assert (step > 0).all() and (step < 0.05).all()


@pytest.mark.parametrize("name", ["fedavg", *ROBUST, *OPTIMIZERS])
def test_nan_and_scaled_updates_never_reach_the_global_weights(name):
    cfg = RunConfig(strategy=name, dp="none", **{k: v for opts in (ROBUST.get(name, {}),
                                                              OPTIMIZERS.get(name, {}))
                                                  for k, v in opts.items()})
    strategy = strategy_for_run(cfg)  # with the run's vetting: norm bound 5x the median
    configured(strategy)
    good = honest_updates(7)
    nan = scaled(good[0], 1.0)
    nan["layer.weight"][0, 0] = np.nan
    replies = [reply(i + 1, a, 10) for i, a in enumerate(good)]
    replies += [reply(8, nan, 10, "nan-site"), reply(9, scaled(good[1], 1e6), 10, "big-site")]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert sorted(r["site"] for r in strategy.rejected) == ["big-site", "nan-site"]
    for key in SHAPES:
        got = arrays[key].numpy()
        assert np.isfinite(got).all() and np.abs(got).max() < 5


# --- update vetting ------------------------------------------------------------------------


def vetted(max_norm_ratio: float = 5.0, quarantine_after: int = 0, path=None):
    from strategies.guard import VettingRules
    from strategies.quarantine import Quarantine

    strategy = build_strategy("fedavg", fraction_train=1.0, min_sites=2)
    strategy.vetting = VettingRules(max_norm_ratio, quarantine_after)
    if quarantine_after:
        strategy.quarantine = Quarantine(path)
    configured(strategy)
    return strategy


def test_norm_bound_rejects_an_update_far_beyond_the_median_and_keeps_the_rest():
    strategy = vetted(max_norm_ratio=5.0)
    good = honest_updates(4)
    replies = [reply(i + 1, a, 10) for i, a in enumerate(good)]
    replies.append(reply(5, scaled(good[0], 8.0), 10, "scaled"))  # ~8x the median distance
    arrays, _ = strategy.aggregate_train(1, replies)
    assert [r["site"] for r in strategy.rejected] == ["scaled"]
    assert "exceeds 5 x the round's median" in strategy.rejected[0]["reason"]
    assert_arrays_close(arrays, weighted_average([(g, 10) for g in good]))
    # 3x the median is within the bound: kept.
    strategy = vetted(max_norm_ratio=5.0)
    strategy.aggregate_train(1, [*replies[:4], reply(5, scaled(good[0], 3.0), 10, "big")])
    assert strategy.rejected == []


def test_norm_bound_needs_three_updates_and_can_be_switched_off():
    good = honest_updates(2)
    pair = [reply(1, good[0], 10), reply(2, scaled(good[1], 100.0), 10, "big")]
    strategy = vetted(max_norm_ratio=5.0)
    strategy.aggregate_train(1, pair)
    assert strategy.rejected == []  # no median worth the name among two
    strategy = vetted(max_norm_ratio=0.0)
    strategy.aggregate_train(1, [*pair, reply(3, good[0], 10)])
    assert strategy.rejected == []


def test_an_update_that_leaves_the_model_unchanged_is_rejected():
    strategy = vetted()
    good = honest_updates(3)
    replies = [reply(i + 1, a, 10) for i, a in enumerate(good)]
    replies.append(reply(4, weights(0.0), 10, "free-rider"))  # the global model sent back
    arrays, _ = strategy.aggregate_train(1, replies)
    assert [r["site"] for r in strategy.rejected] == ["free-rider"]
    assert "unchanged" in strategy.rejected[0]["reason"]
    assert_arrays_close(arrays, weighted_average([(g, 10) for g in good]))


def test_declared_examples_beyond_the_registered_size_are_rejected():
    strategy = vetted()
    strategy.register_sites([{"site": "site-1", "n_train": 10},
                             {"site": "site-2", "n_train": 30}])
    good = honest_updates(3)
    replies = [reply(1, good[0], 10), reply(2, good[1], 3000),  # site-2 inflates its weight
               reply(3, good[2], 50)]  # site-3 joined later: not registered, not checked
    arrays, _ = strategy.aggregate_train(1, replies)
    assert [r["site"] for r in strategy.rejected] == ["site-2"]
    assert strategy.rejected[0]["reason"] == "declares 3000 training examples, registered 30"
    assert_arrays_close(arrays, weighted_average([(good[0], 10), (good[2], 50)]))


def test_rejections_are_counted_per_site_and_benign_ones_are_not():
    strategy = vetted()
    good = honest_updates(3)
    for rnd in (1, 2):
        strategy.aggregate_train(rnd, [
            *(reply(i + 1, a, 10) for i, a in enumerate(good)),
            reply(4, scaled(good[0], 100.0), 10, "hostile"),
            Message(content=refusal("tired", "budget spent"),
                    reply_to=Message(RecordDict(), dst_node_id=5,
                                     message_type=MessageType.TRAIN))])
    assert dict(strategy.rejection_counts) == {"hostile": 2}


def test_quarantine_after_n_rejected_rounds_is_audited_and_released_by_an_admin(tmp_path):
    from strategies.quarantine import QUARANTINE_FILE, read_events, release

    strategy = vetted(quarantine_after=2, path=tmp_path / QUARANTINE_FILE)
    good = honest_updates(3)
    honest = [reply(i + 1, a, 10) for i, a in enumerate(good)]

    def round_with(update, rnd):
        strategy.aggregate_train(rnd, [*honest, reply(4, update, 10, "hostile")])
        return [r["reason"] for r in strategy.rejected]

    round_with(scaled(good[0], 100.0), 1)
    assert read_events(tmp_path / QUARANTINE_FILE) == []
    round_with(scaled(good[0], 100.0), 2)
    (event,) = read_events(tmp_path / QUARANTINE_FILE)
    assert event["event"] == "quarantined" and event["site"] == "hostile"
    assert event["round"] == 2 and event["rejections"] == 2 and event["time"]
    # Quarantined: even a good update from it is not read.
    reasons = round_with(good[1], 3)
    assert len(reasons) == 1 and reasons[0].startswith("site quarantined since round 2")
    with pytest.raises(ValueError, match="must name who"):
        release(tmp_path, "hostile", " ")
    with pytest.raises(ValueError, match="not quarantined"):
        release(tmp_path, "site-1", "admin")
    release(tmp_path, "hostile", "alice", "patched their pipeline")
    assert round_with(good[1], 4) == []  # the coordinator re-reads the file every round
    events = read_events(tmp_path / QUARANTINE_FILE)
    assert [(e["event"], e["by"]) for e in events] == [("quarantined", "coordinator"),
                                                       ("released", "alice")]
    round_with(scaled(good[0], 100.0), 5)  # a released site starts afresh: one strike
    assert len(read_events(tmp_path / QUARANTINE_FILE)) == 2


def test_quarantine_lives_in_the_run_directory(tmp_path):
    from strategies.quarantine import QUARANTINE_FILE

    strategy = strategy_for_run(RunConfig(dp="none", quarantine_after=3, out=str(tmp_path)))
    assert strategy.vetting.quarantine_after == 3
    assert strategy.quarantine.path == tmp_path / QUARANTINE_FILE
    assert strategy_for_run(RunConfig(dp="none")).quarantine is None


# --- what runs with secure aggregation and DP ------------------------------------------------


@pytest.mark.parametrize("name", list(ROBUST))
def test_robust_strategies_are_refused_under_secagg_with_the_reason(name):
    with pytest.raises(ValueError, match=f"{name} must see each update") as info:
        check_combination(RunConfig(strategy=name, dp="none", secagg=True))
    assert "site-side clipping" in str(info.value)
    check_combination(RunConfig(strategy=name, dp="none"))
    check_combination(RunConfig(strategy=name, dp="local", model=DP_SGD_MODEL))
    # Local DP's class centroids are one noised sum per round: nothing to be robust over.
    with pytest.raises(ValueError, match="local DP fits the centroid model with strategy "
                                         "fedavg"):
        check_combination(RunConfig(strategy=name, dp="local"))


@pytest.mark.parametrize("name", [n for n in strategy_names() if n not in ("fedavg", "fedavgm")])
def test_distributed_dp_runs_only_with_plain_averaging(name):
    cfg = RunConfig(strategy=name, dp="none")
    cfg.dp = "distributed"
    with pytest.raises(ValueError, match="only --strategy fedavg or fedavgm runs with it"):
        check_combination(cfg)


def test_distributed_dp_with_fedavg_is_not_refused_by_the_registry():
    from strategies.registry import SPECS as specs
    from strategies.registry import _refusals

    assert not [p for p in _refusals(specs["fedavg"], "distributed", secagg=True)
                if "distributed" in p]


@pytest.mark.parametrize(("settings", "message"), [
    ({"trim_fraction": 0.5}, "trim_fraction"), ({"krum_select": 0}, "krum_select"),
    ({"server_lr": 0.0}, "server_lr"), ({"max_update_norm_ratio": -1.0}, "max_update_norm"),
])
def test_out_of_range_robust_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        check_combination(RunConfig(dp="none", **settings))


def test_vetting_rejections_have_their_own_metric_kinds_and_per_site_counts():
    from server.monitoring import REJECTION_KINDS, rejection_kind, rejections_by_site

    reasons = {"declares 3000 training examples, registered 30": "example_count",
               "update norm 12 exceeds 5 x the round's median 1.2": "norm_bound",
               "the update leaves the global model unchanged (no training)": "no_training",
               "site quarantined since round 2 after 2 rejected rounds; an administrator "
               "must release it": "quarantined",
               "site declined the round: budget spent": "declined"}
    for reason, kind in reasons.items():
        assert rejection_kind(reason) == kind and kind in REJECTION_KINDS
    rounds = [{"round": 1, "rejected": [{"site": "a", "reason": "update norm 9 exceeds 5 x"
                                         " the round's median 1"},
                                        {"site": "b", "reason": "site declined the round: x"}]},
              {"round": 2, "rejected": [{"site": "a", "reason": "w: contains NaN or infinite "
                                         "values"}]}]
    assert rejections_by_site(rounds) == {"a": {"norm_bound": 1, "non_finite": 1}}


def test_quarantine_command_lists_and_releases_with_an_audit_line(tmp_path):
    from typer.testing import CliRunner

    from server.quarantine_cli import quarantine_app
    from strategies.quarantine import QUARANTINE_FILE, Quarantine, read_events

    Quarantine(tmp_path / QUARANTINE_FILE).impose("E2", 4, 3, "update norm 9 exceeds 5 x")
    runner = CliRunner()
    listed = runner.invoke(quarantine_app, ["list", "--run-dir", str(tmp_path)])
    assert listed.exit_code == 0 and "quarantined now: E2" in listed.output
    wrong = runner.invoke(quarantine_app, ["release", "--run-dir", str(tmp_path),
                                           "--site", "BH", "--by", "alice"])
    assert wrong.exit_code == 2 and "not quarantined" in wrong.output
    done = runner.invoke(quarantine_app, ["release", "--run-dir", str(tmp_path), "--site",
                                          "E2", "--by", "alice", "--note", "fixed export"])
    assert done.exit_code == 0, done.output
    last = read_events(tmp_path / QUARANTINE_FILE)[-1]
    assert (last["event"], last["site"], last["by"], last["note"]) == (
        "released", "E2", "alice", "fixed export")
    listed = runner.invoke(quarantine_app, ["list", "--run-dir", str(tmp_path)])
    assert "quarantined now: none" in listed.output


def test_direction_check_rejects_a_sign_flipped_update_and_keeps_honest_ones():
    from strategies.guard import VettingRules

    reference = weights(0.0)
    good = honest_updates(4, seed=3)
    flipped = {k: (2 * reference[k] - good[0][k]).astype(np.float32) for k in SHAPES}
    strategy = vetted(max_norm_ratio=0.0)
    strategy.vetting = VettingRules(direction_ratio=0.5)
    replies = [reply(i + 1, a, 10) for i, a in enumerate(good)]
    replies.append(reply(5, flipped, 10, "flipped"))
    arrays, _ = strategy.aggregate_train(1, replies)
    assert [r["site"] for r in strategy.rejected] == ["flipped"]
    assert "cosine" in strategy.rejected[0]["reason"]
    assert_arrays_close(arrays, weighted_average([(g, 10) for g in good]))
    # The check off: the same flipped update is aggregated.
    strategy = vetted(max_norm_ratio=0.0)
    strategy.aggregate_train(1, replies)
    assert strategy.rejected == []



def test_an_update_against_the_others_is_rejected_even_while_the_check_stands_aside():
    """Three hostile sites that pull the round's median cosine below the gate no longer
    switch the direction check off: updates pointing against the others' median are
    rejected in any round, and honest ones kept."""
    from common.config import OPPOSED_DIRECTION
    from strategies.guard import MIN_SHARED_DIRECTION, direction_problems, others_median_cosines

    rng = np.random.default_rng(5)
    shared = rng.normal(size=4000)
    honest = [shared + 2.0 * rng.normal(size=4000) for _ in range(9)]
    updates = dict(enumerate(honest + [-u for u in honest[:3]]))
    cosines = others_median_cosines(list(updates.values()))
    assert float(np.median(cosines)) < MIN_SHARED_DIRECTION  # the relative bound is off
    assert min(cosines[:9]) > 0 > OPPOSED_DIRECTION > max(cosines[9:])
    problems = direction_problems(updates, ratio=0.25)
    assert sorted(problems) == [9, 10, 11]
    assert all("points against them" in reason for reason in problems.values())
    assert direction_problems(updates, ratio=0.0) == {}  # the check off: no floor either


def heterogeneous_updates(count: int, seed: int, size: int = 4000) -> list[np.ndarray]:
    """Honest sites' updates: a shared direction plus a larger site-specific part, so
    that each has a cosine of about .4 with the others' median, as BRCA sites do."""
    rng = np.random.default_rng(seed)
    shared = rng.normal(size=size)
    return [shared + 1.6 * rng.normal(size=size) for _ in range(count)]


def test_an_update_is_not_its_own_direction_reference():
    from strategies.guard import others_median_cosines

    honest = heterogeneous_updates(9, seed=1)
    rng = np.random.default_rng(2)
    noise = [rng.normal(size=honest[0].shape) * np.linalg.norm(honest[0]) / 63 for _ in range(3)]
    cosines = others_median_cosines(honest + noise)
    assert min(cosines[:9]) > 0.25
    assert max(abs(c) for c in cosines[9:]) < 0.1
    # With the update inside its own median, pure noise would look half-honest.
    stack = np.stack(honest + noise)
    median = np.median(stack, axis=0)
    with_self = [float(u @ median) / (np.linalg.norm(u) * np.linalg.norm(median))
                 for u in noise]
    assert min(with_self) > 0.1


@pytest.mark.parametrize("n", [2, 3, 4, 7, 12])
def test_leave_one_out_medians_equal_the_median_of_the_other_updates(n):
    from strategies.guard import leave_one_out_medians

    rng = np.random.default_rng(n)
    stack = rng.normal(size=(n, 300)).astype(np.float32)
    stack[:, :100] = np.round(stack[:, :100])  # ties, some with the removed value itself
    stack[:, 100:110] = 0.0
    for i, median in enumerate(leave_one_out_medians(stack)):
        np.testing.assert_allclose(median, np.median(np.delete(stack, i, axis=0), axis=0),
                                   atol=1e-6)


@pytest.mark.parametrize("attack", ["sign-flip", "noise"])
def test_direction_check_rejects_sign_flipped_and_noise_updates_of_three_sites(attack):
    from server.monitoring import rejection_kind
    from strategies.guard import direction_problems

    for seed in range(5):
        # The attackers' own training would have been honest like the others'.
        *honest, own_a, own_b, own_c = heterogeneous_updates(12, seed)
        own = [own_a, own_b, own_c]
        rng = np.random.default_rng(100 + seed)
        hostile = ([-u for u in own] if attack == "sign-flip" else
                   [rng.normal(size=u.shape) * np.linalg.norm(u) / np.sqrt(u.size) for u in own])
        problems = direction_problems(dict(enumerate(honest + hostile)),
                                      NO_DP_DIRECTION_RATIO)
        assert sorted(problems) == [9, 10, 11], (seed, problems)
        # Counted under their own kind in metrics.json and the coordinator's endpoint.
        assert {rejection_kind(reason) for reason in problems.values()} == {"direction"}


def test_direction_check_keeps_every_honest_site_of_a_clean_round():
    from strategies.guard import direction_problems

    for seed in range(20):
        updates = dict(enumerate(heterogeneous_updates(12, seed)))
        assert direction_problems(updates, NO_DP_DIRECTION_RATIO) == {}


def test_direction_check_stands_aside_when_honest_updates_barely_agree():
    from strategies.guard import MIN_SHARED_DIRECTION, direction_problems, others_median_cosines

    # Late in training: updates nearly orthogonal, the lowest far below half the median.
    rng = np.random.default_rng(7)
    shared = rng.normal(size=4000)
    updates = [shared + scale * rng.normal(size=4000) for scale in [8.0] * 11 + [30.0]]
    cosines = others_median_cosines(updates)
    assert np.median(cosines) < MIN_SHARED_DIRECTION
    assert min(cosines) < NO_DP_DIRECTION_RATIO * np.median(cosines)
    assert direction_problems(dict(enumerate(updates)), NO_DP_DIRECTION_RATIO) == {}


def test_runs_without_dp_vet_directions_and_quarantine_by_default_secagg_runs_do_not():
    from common.config import NO_DP_QUARANTINE_AFTER

    plain = RunConfig.preset("none")
    assert (plain.update_direction_ratio, plain.quarantine_after) == (
        NO_DP_DIRECTION_RATIO, NO_DP_QUARANTINE_AFTER)
    assert NO_DP_DIRECTION_RATIO > 0 and NO_DP_QUARANTINE_AFTER > 0
    for dp in ("distributed", "local", "central"):
        cfg = RunConfig.preset(dp)
        assert (cfg.update_direction_ratio, cfg.quarantine_after) == (0.0, 0), dp
    strategy = strategy_for_run(plain)
    assert strategy.vetting.direction_ratio == NO_DP_DIRECTION_RATIO
    assert strategy.quarantine is not None
