"""The coordinator's round loop against scripted sites (no Flower processes)."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import MessageType
from scripted_grid import ScriptedGrid, ScriptedSite

from common.config import ModelConfig, RunConfig
from common.consortium_setup import SETUP
from common.protocol import ARRAYS, CONFIG, SETUP_DIGEST
from server.rounds import FederationError, load_checkpoint, run_federation, save_checkpoint
from server.rounds.executor import LOST_REASON

TINY = ModelConfig(d_model=8, n_heads=2, n_layers=1, tokens_per_modality=1)


pytestmark = pytest.mark.usefixtures("task_identity", "one_torch_thread")


def config(**kw) -> RunConfig:
    base = {"dp": "none", "strategy": "fedavg", "rounds": 3, "min_sites": 2,
            "round_timeout": 5.0, "seed": 0, "model": TINY,
            "round_patience": 10}
    return RunConfig(**{**base, **kw})


def sites(**kw) -> list[ScriptedSite]:
    return [ScriptedSite("site-a", 40, 0.01, seed=1, **kw),
            ScriptedSite("site-b", 20, 0.04, seed=2, **kw),
            ScriptedSite("site-c", 20, -0.02, seed=3, **kw)]


def initial_weights(cfg: RunConfig) -> dict[str, np.ndarray]:
    from scripted_grid import SCHEMA

    from common.model import ModelSpec, build_model
    from common.training import seed_everything

    seed_everything(cfg.seed)
    model = build_model(ModelSpec.for_schema(cfg.model, SCHEMA))
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def test_rounds_aggregate_validate_and_send_the_setup_once():
    cfg = config(rounds=2)
    grid = ScriptedGrid(sites())
    outcome = run_federation(grid, cfg)
    assert [r["round"] for r in outcome.rounds] == [1, 2]
    # The setup went once to each site, and rounds carry only round fields.
    assert sorted(m.metadata.dst_node_id for m in grid.sent_of(MessageType.QUERY, SETUP)) == [
        1, 2, 3]
    digest = outcome.setup.digest()
    for msg in grid.sent_of(MessageType.TRAIN) + grid.sent_of(MessageType.EVALUATE):
        assert msg.content[CONFIG][SETUP_DIGEST] == digest
        assert not any(k.startswith("standardizer") or k == "schema"
                       for k in msg.content[CONFIG])
    # FedAvg: two rounds of the patient-weighted mean step (40*0.01 + 20*0.04 - 20*0.02)/80.
    start = initial_weights(cfg)
    mean_step = (40 * 0.01 + 20 * 0.04 - 20 * 0.02) / 80
    last = grid.sent_of(MessageType.EVALUATE)[0].content[ARRAYS]
    for key, w0 in start.items():
        np.testing.assert_allclose(last[key].numpy(), w0 + 2 * mean_step, atol=1e-5)
    first = outcome.rounds[0]
    assert first["rejected"] == [] and set(first["update_bytes"]) == {"site-a", "site-b",
                                                                       "site-c"}
    assert first["train"]["loss"] == pytest.approx(1.0)
    assert [s["site"] for s in first["sites"]] == ["site-a", "site-b", "site-c"]
    assert all(s["val"]["n_val"] == 30 for s in first["sites"])
    assert first["val"]["accuracy"] == pytest.approx(20 / 30)
    assert sum(r["best"] for r in outcome.rounds) == 1


def test_a_site_lost_mid_round_is_recorded_and_the_round_goes_on():
    grid = ScriptedGrid(sites())
    grid.drop_on(3, MessageType.TRAIN, 2)
    outcome = run_federation(grid, config(rounds=3))
    second = outcome.rounds[1]
    assert second["rejected"] == [{"site": "site-c", "node": 3, "reason": LOST_REASON}]
    assert set(second["update_bytes"]) == {"site-a", "site-b"}
    assert [s["site"] for s in second["sites"] if "n_train" in s] == ["site-a", "site-b"]
    assert not any(r.get("failed") for r in outcome.rounds) and len(outcome.rounds) == 3


def test_refusals_below_min_sites_end_the_run_with_the_best_round_so_far():
    scripted = sites()
    scripted[0].refuse_from = scripted[1].refuse_from = 2
    outcome = run_federation(ScriptedGrid(scripted), config(rounds=3, min_sites=2))
    assert "round 2: 1 usable updates, fewer than the 2 required" in outcome.stopped
    assert "site-a: site declined the round: privacy budget" in outcome.stopped
    assert [r.get("failed", False) for r in outcome.rounds] == [False, True]
    assert outcome.best_round == 1 and outcome.best_state is not None


def test_no_validated_round_is_an_error():
    scripted = sites()
    for s in scripted:
        s.refuse_from = 1
    with pytest.raises(FederationError, match="0 usable updates"):
        run_federation(ScriptedGrid(scripted), config(rounds=2))


def test_early_stop_after_patience_rounds_without_improvement():
    # Validation of aggregate r: best at round 2, worse afterwards.
    scores = {1: 15, 2: 25, 3: 20, 4: 18, 5: 28}
    scripted = sites(hits=lambda r: scores.get(r, 10))
    outcome = run_federation(ScriptedGrid(scripted), config(rounds=5, round_patience=2))
    assert [r["round"] for r in outcome.rounds] == [1, 2, 3, 4]
    assert outcome.best_round == 2
    assert [r["best"] for r in outcome.rounds] == [False, True, False, False]


@pytest.mark.parametrize("strategy, dp", [("fedavg", "none"), ("fedavgm", "none"),
                                          ("fedadam", "none"), ("fedyogi", "none"),
                                          ("fedavg", "central")])
def test_resume_from_a_checkpoint_continues_exactly(tmp_path, strategy, dp):
    cfg = config(rounds=3, strategy=strategy, dp=dp, epsilon=8.0)
    full_grid = ScriptedGrid(sites())
    full = run_federation(full_grid, cfg)
    full_final = {k: v.numpy() for k, v in
                  full_grid.sent_of(MessageType.EVALUATE)[0].content[ARRAYS].items()}

    class CoordinatorCrash(Exception):
        pass

    saved = []

    def save_then_crash(ckpt):
        saved.append(ckpt)
        if ckpt.round == 2:
            raise CoordinatorCrash

    with pytest.raises(CoordinatorCrash):
        run_federation(ScriptedGrid(sites()), cfg, checkpoint=save_then_crash)
    assert [c.round for c in saved] == [1, 2]
    assert ("momentum" in saved[-1].strategy) == (strategy == "fedavgm")  # server momentum
    # FedAdam's and FedYogi's server moments
    assert ("v_t" in saved[-1].strategy) == (strategy in ("fedadam", "fedyogi"))
    if dp == "central":  # the checkpoint of round 2 counts exactly two releases
        assert saved[-1].strategy["releases"] == 2
    save_checkpoint(tmp_path, saved[-1])
    ckpt = load_checkpoint(tmp_path)
    assert ckpt is not None and ckpt.round == 2

    # A new run (fresh sites: no setup kept) continues after round 2.
    grid = ScriptedGrid(sites())
    resumed = run_federation(grid, cfg, resume=ckpt)
    assert resumed.resumed_from == [2]
    assert len(grid.sent_of(MessageType.QUERY, "describe")) == 0
    assert len(grid.sent_of(MessageType.QUERY, SETUP)) == 3
    assert {m.content[CONFIG]["server-round"] for m in grid.sent_of(MessageType.TRAIN)} == {3}
    assert [r["round"] for r in resumed.rounds] == [1, 2, 3]
    assert resumed.best_round == full.best_round
    assert resumed.central_dp == full.central_dp
    for key, value in full.best_state.items():
        assert np.array_equal(value.numpy(), resumed.best_state[key].numpy()), key
    final = {k: v.numpy() for k, v in grid.sent_of(MessageType.EVALUATE)[0].content[ARRAYS]
             .items()}
    assert resumed.rounds[-1]["val"] == full.rounds[-1]["val"]
    assert all(np.isfinite(v).all() for v in final.values())
    # The last aggregate (momentum included) is the uninterrupted run's.
    assert full_final.keys() == final.keys()
    for key, value in full_final.items():
        np.testing.assert_allclose(final[key], value, atol=1e-6)


def test_a_site_that_lost_its_setup_gets_it_again_and_trains():
    scripted = sites()
    grid = ScriptedGrid(scripted)
    forget = scripted[1]
    original = forget.answer

    def restarted(msg):  # the SuperNode restarted before round 2: its run state is gone
        config = msg.content.get(CONFIG)
        if (msg.metadata.message_type == MessageType.TRAIN and config["server-round"] == 2
                and not getattr(forget, "_restarted", False)):
            forget._restarted = True
            forget.setup = None
        return original(msg)

    forget.answer = restarted
    outcome = run_federation(grid, config(rounds=2))
    setups = [m.metadata.dst_node_id for m in grid.sent_of(MessageType.QUERY, SETUP)]
    assert sorted(setups) == [1, 2, 2, 3]
    second = outcome.rounds[1]
    assert second["rejected"] == []
    assert {s["site"] for s in second["sites"] if "n_train" in s} == {"site-a", "site-b",
                                                                      "site-c"}


# --- one executor for plain and SecAgg+ rounds ------------------------------------------


def secure_executor(monkeypatch, strategy, step: dict[str, float]):
    """A SecAgg+ executor whose protocol run is replaced by its result: the mean update
    ``step`` (per weight) over three sites of 10 patients each."""
    from flwr.app import ArrayRecord

    from common.protocol import to_array
    from server.rounds import executor
    from server.secagg import SecAggSettings, SecureRound

    _, setup = _setup()
    calls = []

    def fake_secure_round(grid, server_round, arrays, nodes, config, *, max_weight, settings):
        calls.append({"nodes": sorted(nodes), "config": dict(config)})
        aggregate = ArrayRecord({k: to_array(v.numpy() + step[k]) for k, v in arrays.items()})
        return SecureRound([], aggregate, [], 3, 30, 0.5)

    monkeypatch.setattr(executor, "secure_train_round", fake_secure_round)
    grid = ScriptedGrid(sites())
    run = executor.RoundExecutor(grid, strategy, setup, timeout=1.0,
                                 secagg=SecAggSettings(), max_weight=40)
    run.with_setup = {1, 2, 3}
    return run, calls


def _setup():
    from scripted_grid import synthetic_data

    from client.site import Site
    from common.consortium_setup import ConsortiumSetup
    from common.preprocessing import Standardizer

    data = synthetic_data(30, 1)
    return Site("x", data, data), ConsortiumSetup(data.schema, Standardizer.fit(data),
                                                  np.ones(3, dtype=np.float32))


def _weights():
    from flwr.app import ArrayRecord

    from common.protocol import to_array

    return ArrayRecord({"w": to_array(np.zeros((2, 3), np.float32)),
                        "b": to_array(np.zeros(3, np.float32))})


def test_secure_rounds_go_through_the_strategys_momentum(monkeypatch):
    from common.protocol import RoundConfig
    from strategies import build_strategy

    strategy = build_strategy("fedavgm", fraction_train=1.0, min_sites=2, server_momentum=0.9)
    run, calls = secure_executor(monkeypatch, strategy, {"w": 0.1, "b": -0.2})
    first = run.train(1, _weights(), RoundConfig("d").to_record())
    assert first.accepted == 3 and first.rejected == [] and first.update_bytes is None
    np.testing.assert_allclose(first.arrays["w"].numpy(), 0.1, atol=1e-6)
    assert first.metrics["train-loss"] == pytest.approx(0.5)
    second = run.train(2, first.arrays, RoundConfig("d").to_record())
    # Server momentum: the second step is (1 + 0.9) times the mean update.
    np.testing.assert_allclose(second.arrays["w"].numpy(), 0.1 + 1.9 * 0.1, atol=1e-5)
    np.testing.assert_allclose(second.arrays["b"].numpy(), -0.2 - 1.9 * 0.2, atol=1e-5)
    assert calls[0]["nodes"] == [1, 2, 3] and calls[1]["config"]["server-round"] == 2


def test_secure_rounds_carry_the_strategys_config_and_its_guard_checks_the_aggregate(
        monkeypatch):
    from common.protocol import PROXIMAL_MU, RoundConfig
    from server.secagg import SECURE_AGGREGATE
    from strategies import build_strategy

    strategy = build_strategy("fedprox", fraction_train=1.0, min_sites=2, proximal_mu=0.3)
    run, calls = secure_executor(monkeypatch, strategy, {"w": float("nan"), "b": 0.0})
    result = run.train(1, _weights(), RoundConfig("d").to_record())
    assert calls[0]["config"][PROXIMAL_MU] == pytest.approx(0.3)  # FedProx's own key
    assert result.arrays is None and result.accepted == 0
    assert result.rejected[0]["site"] == SECURE_AGGREGATE
    assert "NaN or infinite" in result.rejected[0]["reason"]


def test_a_failed_checkpoint_write_keeps_the_last_good_one_and_the_run_goes_on(
        tmp_path, monkeypatch, caplog):
    import errno
    import os

    cfg = config()
    real_fsync = os.fsync
    written: list[int] = []

    def save(ckpt):
        written.append(ckpt.round)
        save_checkpoint(tmp_path, ckpt)

    def full_disk(fd):
        if len(written) >= 2:  # rounds after the first: the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk)
    outcome = run_federation(ScriptedGrid(sites()), cfg, checkpoint=save)
    assert [r["round"] for r in outcome.rounds] == [1, 2, 3] and not outcome.stopped
    assert len(written) >= 2
    monkeypatch.setattr(os, "fsync", real_fsync)
    kept = load_checkpoint(tmp_path)
    assert kept is not None and kept.round == written[0]
    assert not list(tmp_path.glob(".*.tmp"))  # no half-written file left behind
    assert "checkpoint not written" in caplog.text and "No space left" in caplog.text


def test_per_site_rejection_counts_survive_a_checkpoint():
    from server.rounds.checkpoint import restore_strategy, strategy_state
    from strategies import strategy_for_run

    before = strategy_for_run(config())
    before.rejection_counts["site-a"] += 2
    after = strategy_for_run(config())
    restore_strategy(after, strategy_state(before))
    assert after.rejection_counts == {"site-a": 2}


@pytest.mark.parametrize("held", ["metrics.json", "checkpoint", "quarantine.jsonl"])
def test_a_new_run_never_starts_in_an_earlier_runs_directory(tmp_path, held):
    """Whatever starts the ServerApp (simulate, flwr run, the coordinator), a run that does
    not resume refuses a directory holding an earlier run, before any message is sent."""
    from common.config import RunConfig
    from server.app import run_server

    earlier = tmp_path / held
    if held == "checkpoint":
        earlier.mkdir()
    else:
        earlier.write_text("{}\n")
    cfg = RunConfig.preset("none", data="", out=str(tmp_path))
    grid = ScriptedGrid(sites())
    with pytest.raises(FederationError, match=rf"already holds a run \({held}\)"):
        run_server(grid, cfg, "run-2")
    assert grid.sent_of(MessageType.QUERY, "describe") == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [held]
