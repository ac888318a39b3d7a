"""Tests for server.monitoring: round records in, Prometheus text exposition out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from prometheus_client.parser import text_string_to_metric_families

from common.protocol import ARRAYS, METRICS, NUM_EXAMPLES, SITE, SiteMetrics, refusal, to_array
from server.monitoring import (
    METRIC_NAMES,
    MULTIPROC_ENV,
    CoordinatorMetrics,
    rejection_kind,
    serve_coordinator_metrics,
    update_sizes,
)
from strategies.guard import update_problem

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("task_identity")


EPSILON_AFTER_ROUND = {"site-a": 2.25, "site-b": 3.5, "site-c": 4.75}


@pytest.fixture
def local_dp_round() -> dict:
    """A round as the round loop records it under local DP: three sites trained, one
    declined (budget spent), one sent NaN weights; the validation of the aggregate, from
    the next round's replies, attached. Built by the real guard and round record."""
    from scripted_grid import confusion_with_hits

    from common.protocol import SiteMetrics
    from server.rounds.records import RoundRecord
    from strategies import build_strategy

    weights = {"w": np.ones((64, 32), np.float32), "b": np.zeros(32, np.float32)}
    trained = [(1, "site-a", 120, 0.58), (2, "site-b", 80, 0.66), (3, "site-c", 45, 0.63)]
    replies = [_train_reply(node, site, weights, metrics=SiteMetrics(
        num_examples=n, train_loss=loss, epsilon=EPSILON_AFTER_ROUND[site]))
        for node, site, n, loss in trained]
    replies.append(Message(content=refusal("site-d", "privacy budget epsilon 8 would be "
                                           "exceeded"), reply_to=_train_request(41)))
    replies.append(_train_reply(42, "site-e", {**weights, "w": np.full((64, 32), np.nan,
                                                                       np.float32)}))
    strategy = build_strategy("fedavg", fraction_train=1.0, min_sites=2)
    _, train_metrics = strategy.aggregate_train(3, replies)
    record = RoundRecord(3, rejected=strategy.rejected, update_bytes=update_sizes(replies),
                         train_loss=float(train_metrics["train-loss"]), seconds=42.5)
    record.add_training(replies)
    # Next round: site-a and site-d (whose update was not used) validated the aggregate.
    validated = [_train_reply(node, site, weights, metrics=SiteMetrics(
        num_examples=n, train_loss=0.5, val_examples=30, val_loss_sum=30 * loss,
        confusion=confusion_with_hits(hits))) for node, site, n, loss, hits in
        ((1, "site-a", 120, 0.7, 24), (41, "site-d", 10, 0.9, 18))]
    record.add_validation(validated)
    return record.to_dict()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics and index every sample by (name, sorted labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture
def served() -> Iterator[tuple[CoordinatorMetrics, int]]:
    metrics = CoordinatorMetrics()
    server, thread = metrics.start_http_server(0, "127.0.0.1")
    yield metrics, server.server_port
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_round_record_is_scraped_over_http(served, local_dp_round):
    metrics, port = served
    metrics.run_started("run-42", "fedavg", "local", rounds=10, epsilon_budget=8.0)
    metrics.round_completed(local_dp_round)
    got = scrape(port)

    assert got[("cancer_alpha_rounds_total", (("outcome", "completed"),))] == 1
    assert ("cancer_alpha_rounds_total", (("outcome", "failed"),)) not in got
    assert got[("cancer_alpha_round", ())] == 3
    assert got[("cancer_alpha_rounds_planned", ())] == 10
    assert got[("cancer_alpha_epsilon_budget", ())] == 8.0
    # site-d only validated: it did not take part in this round's aggregate
    assert got[("cancer_alpha_participating_sites", ())] == 3
    sizes = local_dp_round["update_bytes"]
    assert set(sizes) == {"site-a", "site-b", "site-c", "site-e"}  # site-d sent no weights
    for site, eps in EPSILON_AFTER_ROUND.items():
        assert got[("cancer_alpha_site_epsilon", (("site", site),))] == eps
        assert got[("cancer_alpha_site_rounds_total", (("site", site),))] == 1
        assert got[("cancer_alpha_update_size_bytes_sum", (("site", site),))] == sizes[site]
        assert got[("cancer_alpha_update_size_bytes_count", (("site", site),))] == 1
    assert ("cancer_alpha_site_epsilon", (("site", "site-d"),)) not in got
    assert got[("cancer_alpha_rejected_updates_total",
                (("reason", "declined"), ("site", "site-d")))] == 1
    assert got[("cancer_alpha_rejected_updates_total",
                (("reason", "non_finite"), ("site", "site-e")))] == 1
    assert got[("cancer_alpha_round_duration_seconds_count", ())] == 1
    assert got[("cancer_alpha_round_duration_seconds_sum", ())] == 42.5
    assert got[("cancer_alpha_round_duration_seconds_bucket", (("le", "30.0"),))] == 0
    assert got[("cancer_alpha_round_duration_seconds_bucket", (("le", "60.0"),))] == 1
    assert got[("cancer_alpha_last_round_duration_seconds", ())] == 42.5
    # FedAvg's patient-weighted training loss of the three accepted updates
    assert got[("cancer_alpha_train_loss", ())] == pytest.approx(
        (120 * 0.58 + 80 * 0.66 + 45 * 0.63) / 245)
    # pooled validation of site-a (24 of 30 right, loss 0.7) and site-d (18 of 30, 0.9)
    assert got[("cancer_alpha_val_loss", ())] == pytest.approx(0.8)
    assert got[("cancer_alpha_val_accuracy", ())] == pytest.approx(42 / 60)
    assert got[("cancer_alpha_val_f1_macro", ())] == local_dp_round["val"]["f1_macro"]
    assert 0 < local_dp_round["val"]["f1_macro"] < 1
    info = [v for (name, labels), v in got.items() if name == "cancer_alpha_run_info"]
    assert len(info) == 1 and info[0] > 1.6e9  # the run's start time
    assert ("cancer_alpha_run_info",
            (("dp", "local"), ("run_id", "run-42"), ("strategy", "fedavg"))) in got


def test_rounds_accumulate_and_gauges_follow_the_last_round(served, local_dp_round):
    metrics, port = served
    metrics.round_completed(local_dp_round)
    later = {**local_dp_round, "round": 4, "rejected": [], "seconds": 7.0,
             "sites": [{**s, "epsilon": s["epsilon"] + 1} for s in local_dp_round["sites"][:2]],
             "update_bytes": {"site-a": 1000, "site-b": 3000}}
    metrics.round_completed(later)
    got = scrape(port)
    assert got[("cancer_alpha_rounds_total", (("outcome", "completed"),))] == 2
    assert got[("cancer_alpha_round", ())] == 4
    assert got[("cancer_alpha_participating_sites", ())] == 2
    assert got[("cancer_alpha_site_epsilon", (("site", "site-a"),))] == 3.25
    assert got[("cancer_alpha_site_epsilon", (("site", "site-c"),))] == 4.75  # unchanged
    assert got[("cancer_alpha_site_rounds_total", (("site", "site-a"),))] == 2
    assert got[("cancer_alpha_site_rounds_total", (("site", "site-c"),))] == 1
    assert got[("cancer_alpha_update_size_bytes_sum", (("site", "site-b"),))] == (
        local_dp_round["update_bytes"]["site-b"] + 3000)
    assert got[("cancer_alpha_round_duration_seconds_sum", ())] == 49.5
    assert got[("cancer_alpha_last_round_duration_seconds", ())] == 7.0


def test_failed_round_counts_failure_and_rejections_only(served, local_dp_round):
    metrics, port = served
    metrics.round_completed(local_dp_round)
    metrics.round_completed({
        "round": 4, "failed": True,
        "rejected": [{"site": "site-a", "node": 1, "reason": "site declined the round: spent"},
                     {"site": "?", "node": 2, "reason": "site error: connection reset"}],
    })
    metrics.run_finished(ok=True)
    got = scrape(port)
    assert got[("cancer_alpha_rounds_total", (("outcome", "failed"),))] == 1
    assert got[("cancer_alpha_rounds_total", (("outcome", "completed"),))] == 1
    assert got[("cancer_alpha_round", ())] == 4
    assert got[("cancer_alpha_participating_sites", ())] == 3  # the last completed round
    assert got[("cancer_alpha_round_duration_seconds_count", ())] == 1
    assert got[("cancer_alpha_rejected_updates_total",
                (("reason", "site_error"), ("site", "?")))] == 1
    assert got[("cancer_alpha_rejected_updates_total",
                (("reason", "declined"), ("site", "site-a")))] == 1
    assert got[("cancer_alpha_runs_total", (("status", "completed"),))] == 1


def test_central_dp_epsilon(served, local_dp_round):
    metrics, port = served
    metrics.run_started("run-c", "fedavg", "central", rounds=5, epsilon_budget=4.0)
    record = {k: v for k, v in local_dp_round.items() if k != "sites"}
    metrics.round_completed({**record, "central_epsilon": 1.37,
                             "sites": [{"site": "site-a", "n_train": 10}]})
    got = scrape(port)
    assert got[("cancer_alpha_central_epsilon", ())] == 1.37
    assert not any(name == "cancer_alpha_site_epsilon" for name, _ in got)


def test_every_documented_metric_is_exposed(served, local_dp_round):
    metrics, port = served
    metrics.run_started("r", "fedprox", "local", rounds=3, epsilon_budget=8.0)
    metrics.round_completed({**local_dp_round, "central_epsilon": 0.5})
    metrics.run_finished(ok=False)
    names = {name for name, _ in scrape(port)}
    for key in METRIC_NAMES:
        base = f"cancer_alpha_{key}"
        assert base in names or f"{base}_count" in names, base


def _train_request(node: int) -> Message:
    return Message(content=RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)


def _train_reply(node: int, site: str, arrays: dict[str, np.ndarray], n=10,
                 metrics: SiteMetrics | None = None) -> Message:
    metrics = metrics or SiteMetrics(num_examples=n, train_loss=0.5)
    content = RecordDict({
        ARRAYS: ArrayRecord({k: to_array(v) for k, v in arrays.items()}),
        METRICS: metrics.to_record(),
        SITE: ConfigRecord({"name": site}),
    })
    return Message(content=content, reply_to=_train_request(node))


def test_rejection_kinds_of_the_real_guard_reasons():
    """Classify the reason strings strategies.guard actually produces."""
    good = {"w": np.ones((3, 2), np.float32), "b": np.zeros(3, np.float32)}
    reference = ArrayRecord({k: to_array(v) for k, v in good.items()})
    cases = {
        "site_error": Message(Error(code=1, reason="boom"), reply_to=_train_request(1)),
        "declined": Message(content=refusal("site-a", "budget spent"),
                            reply_to=_train_request(2)),
        "no_weights": Message(content=RecordDict({
            METRICS: MetricRecord({NUM_EXAMPLES: 5}), SITE: ConfigRecord({"name": "x"})}),
            reply_to=_train_request(3)),
        "invalid_examples": _train_reply(4, "x", good, n=0),
        "shape_mismatch": _train_reply(5, "x", {"w": np.ones((2, 2), np.float32),
                                                "b": good["b"]}),
        "non_finite": _train_reply(6, "x", {"w": np.full((3, 2), np.nan, np.float32),
                                            "b": good["b"]}),
    }
    for kind, msg in cases.items():
        reason = update_problem(msg, reference)
        assert reason is not None, kind
        assert rejection_kind(reason) == kind, reason
    names = _train_reply(7, "x", {"other": good["w"], "b": good["b"]})
    assert rejection_kind(update_problem(names, reference)) == "shape_mismatch"
    assert update_problem(_train_reply(8, "x", good), reference) is None
    assert rejection_kind("something new") == "other"


def test_update_sizes_counts_weight_bytes_per_site():
    a = {"w": np.ones((64, 32), np.float32), "b": np.zeros(32, np.float32)}
    replies = [
        _train_reply(1, "site-a", a),
        _train_reply(2, "site-b", {"w": np.ones((8, 8), np.float64)}),
        Message(Error(code=1, reason="lost"), reply_to=_train_request(3)),
        Message(content=refusal("site-c", "budget"), reply_to=_train_request(4)),
    ]
    sizes = update_sizes(replies)
    assert set(sizes) == {"site-a", "site-b"}  # no weights from the error or the refusal
    assert sizes["site-a"] > (64 * 32 + 32) * 4  # raw float32 bytes plus .npy headers
    assert sizes["site-a"] < (64 * 32 + 32) * 4 + 1024
    assert 8 * 8 * 8 < sizes["site-b"] < 8 * 8 * 8 + 512


_WRITER = """
import json, sys
from server.monitoring import CoordinatorMetrics
run_id, record = sys.argv[1], json.loads(sys.argv[2])
m = CoordinatorMetrics()
m.run_started(run_id, "fedavg", "local", rounds=10, epsilon_budget=8.0)
m.round_completed(record)
m.run_finished(ok=True)
"""


def test_runs_in_other_processes_are_served_from_one_port(tmp_path, local_dp_round):
    """The SuperLink case: each run's ServerApp is a short-lived process of its own."""
    directory = tmp_path / "metrics"
    directory.mkdir()
    (directory / "counter_99999.db").write_bytes(b"stale file of a previous coordinator")
    server, thread = serve_coordinator_metrics(0, "127.0.0.1", directory)
    try:
        assert not (directory / "counter_99999.db").exists()
        env = {**os.environ, MULTIPROC_ENV: str(directory),
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        second = {**local_dp_round, "round": 1, "rejected": [],
                  "sites": [{"site": "site-a", "n_train": 120, "epsilon": 6.0}]}
        for run_id, record in (("first", local_dp_round), ("second", second)):
            subprocess.run([sys.executable, "-c", _WRITER, run_id, json.dumps(record)],
                           env=env, cwd=tmp_path, check=True, timeout=120)
        got = scrape(server.server_port)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    # counters and histograms add up over the two runs' processes
    assert got[("cancer_alpha_rounds_total", (("outcome", "completed"),))] == 2
    assert got[("cancer_alpha_runs_total", (("status", "completed"),))] == 2
    assert got[("cancer_alpha_site_rounds_total", (("site", "site-a"),))] == 2
    assert got[("cancer_alpha_round_duration_seconds_count", ())] == 2
    assert got[("cancer_alpha_rejected_updates_total",
                (("reason", "declined"), ("site", "site-d")))] == 1
    # gauges show the most recent run
    assert got[("cancer_alpha_round", ())] == 1
    assert got[("cancer_alpha_participating_sites", ())] == 1
    assert got[("cancer_alpha_site_epsilon", (("site", "site-a"),))] == 6.0
    assert got[("cancer_alpha_site_epsilon", (("site", "site-b"),))] == 3.5
    runs = {dict(labels)["run_id"]: v for (name, labels), v in got.items()
            if name == "cancer_alpha_run_info"}
    assert set(runs) == {"first", "second"} and runs["second"] >= runs["first"]


def test_serve_coordinator_metrics_needs_a_directory(monkeypatch):
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    with pytest.raises(ValueError, match=MULTIPROC_ENV):
        serve_coordinator_metrics(0, "127.0.0.1")


def test_a_distributed_dp_round_counts_the_sites_in_its_noised_sum(served):
    metrics, port = served
    metrics.round_completed({"round": 2, "rejected": [], "sites": [
        {"site": "site-a", "epsilon": 7.9, "delta": 1e-5},
        {"site": "site-b", "epsilon": 7.9, "delta": 1e-5},
        {"site": "site-c", "epsilon": 7.9, "delta": 1e-5},
        {"site": "site-d", "refused": "budget"}]})
    got = scrape(port)
    # A private site reports its epsilon, not its size: it still took part.
    assert got[("cancer_alpha_participating_sites", ())] == 3
    assert got[("cancer_alpha_site_epsilon", (("site", "site-a"),))] == 7.9
    assert ("cancer_alpha_site_epsilon", (("site", "site-d"),)) not in got
