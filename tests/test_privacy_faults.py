"""A site's privacy account under faults: a coordinator crash and resume, a deleted or
truncated ledger, a ledger that cannot be read; and sites named by their keys."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Context, Message, MessageType, RecordDict
from scripted_grid import SCHEMA, ScriptedGrid, ScriptedSite, synthetic_data

from client.site import Site, initial_state, train_round
from common.config import ModelConfig, RunConfig
from common.consortium_setup import ConsortiumSetup
from common.preprocessing import Standardizer
from common.protocol import ARRAYS, CONFIG, RoundConfig
from common.spend_record import RUN_KEY, SPENT_PREFIX, with_account

TINY = ModelConfig(d_model=8, n_heads=2, n_layers=1, tokens_per_modality=1)
NAMES = ("site-a", "site-b", "site-c")

pytestmark = pytest.mark.usefixtures("task_identity", "one_torch_thread")


def dp_config(**kw) -> RunConfig:
    base = {"dp": "local", "epsilon": 6.0, "strategy": "fedavg", "rounds": 4, "min_sites": 3,
            "round_timeout": 5.0, "seed": 0, "model": TINY, "local_epochs": 1,
            "round_patience": 10}
    return RunConfig(**{**base, **kw})


def hospital(name: str, seed: int) -> Site:
    return Site(name, synthetic_data(48, seed=seed), synthetic_data(15, seed=seed + 10))


def setup_of(site: Site) -> ConsortiumSetup:
    return ConsortiumSetup(SCHEMA, Standardizer.fit(site.train),
                           np.array([1.0, 0.5, 2.0], dtype=np.float32),
                           site_patients={site.name: float(site.train.n)})


def ledger_epsilon(state_dir: Path, delta: float) -> float:
    from client.privacy import PrivacyLedger, ledger_path

    return PrivacyLedger.open(ledger_path(state_dir)).epsilon(delta)


def test_a_repeated_request_gets_the_released_update_again_at_no_cost(tmp_path):
    from client.dp import site_privacy
    from client.privacy import PrivacyLedger, ledger_path

    site = hospital("site-a", 1)
    setup = setup_of(site)
    cfg = dp_config(rounds=2)
    privacy = site_privacy(site.name, site.train.n, {"state-dir": str(tmp_path)}, cfg)
    start = initial_state(setup, cfg)
    rc = RoundConfig(setup.digest(), server_round=1)
    run = {RUN_KEY: "run-1"}
    first, m1 = train_round(site, start, setup, rc, cfg, privacy=privacy, config=run)
    again, m2 = train_round(site, start, setup, rc, cfg, privacy=privacy, config=run)
    ledger = PrivacyLedger.open(ledger_path(tmp_path))
    assert [e.round for e in ledger.entries] == [1]  # charged once
    assert all(torch.equal(first[k], again[k]) for k in first)  # the same release
    assert m1.epsilon == m2.epsilon == pytest.approx(ledger.epsilon(privacy.budget.delta))
    # Another run (or a coordinator that names none) asking the same is a new release.
    train_round(site, start, setup, rc, cfg, privacy=privacy, config={RUN_KEY: "run-2"})
    train_round(site, start, setup, rc, cfg, privacy=privacy)
    assert len(PrivacyLedger.open(ledger_path(tmp_path)).entries) == 3


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_a_ledger_behind_the_coordinators_record_is_refused(tmp_path, damage):
    from client.dp import RoundRefused, site_privacy
    from client.privacy import ledger_path
    from client.privacy_guard import check_acknowledged

    site = hospital("site-a", 1)
    setup = setup_of(site)
    cfg = dp_config(rounds=3)
    node = {"state-dir": str(tmp_path)}
    privacy = site_privacy(site.name, site.train.n, node, cfg)
    state = initial_state(setup, cfg)
    for rnd in (1, 2):
        state, metrics = train_round(site, state, setup, RoundConfig(setup.digest(),
                                                                     server_round=rnd),
                                     cfg, privacy=privacy)
    recorded = with_account(RoundConfig().to_record(), "run", {"site-a": metrics.epsilon})
    check_acknowledged(privacy, "site-a", recorded)  # intact: trains on
    path = ledger_path(tmp_path)
    if damage == "deleted":
        path.unlink()
    else:
        data = json.loads(path.read_text())
        data["entries"] = data["entries"][:1]
        path.write_text(json.dumps(data))
    reopened = site_privacy(site.name, site.train.n, node, cfg)
    with pytest.raises(RoundRefused) as refused:
        check_acknowledged(reopened, "site-a", recorded)
    reason = str(refused.value)
    assert f"recorded {metrics.epsilon:.4g}" in reason and "backup restore" in reason
    assert str(tmp_path) not in reason
    check_acknowledged(reopened, "site-b", recorded)  # another site's record is not ours


def test_a_broken_ledger_is_reported_to_the_coordinator_without_its_path(
        tmp_path, monkeypatch, caplog):
    from client.app import build_client_app
    from client.privacy import ledger_path
    from client.privacy_guard import LEDGER_UNAVAILABLE

    site = hospital("site-a", 1)
    setup = setup_of(site)
    cfg = dp_config()
    monkeypatch.setattr("client.site.load_site", lambda node_config, run_cfg: site)
    ledger_path(tmp_path).write_text('{"format": "something else", "secret": 42}')
    app = build_client_app(cfg.to_flower())
    context = Context(run_id=1, node_id=1, node_config={"state-dir": str(tmp_path)},
                      state=RecordDict(), run_config={})
    app(Message(setup.to_message_content(), dst_node_id=1, message_type=MessageType.QUERY),
        context)
    train = Message(RecordDict({
        CONFIG: RoundConfig(setup.digest(), server_round=1).to_record(),
        ARRAYS: ArrayRecord(initial_state(setup, cfg))}),
        dst_node_id=1, message_type=MessageType.TRAIN)
    with caplog.at_level(logging.ERROR, logger="client.privacy_guard"):
        reply = app(train, context)
    assert reply.has_error() and reply.error.reason == LEDGER_UNAVAILABLE
    assert str(tmp_path) not in reply.error.reason and "42" not in reply.error.reason
    assert str(tmp_path) in caplog.text  # the detail stays in the site's own log


def test_replies_are_named_by_the_registered_key_not_by_what_they_declare():
    from server.rounds import run_federation
    from server.rounds.identity import KeyBoundGrid

    # Node 3 holds site-c's key but declares itself site-a.
    scripted = [ScriptedSite("site-a", 40, 0.01, seed=1), ScriptedSite("site-b", 20, 0.04,
                                                                       seed=2),
                ScriptedSite("site-a", 20, -0.02, seed=3)]
    grid = KeyBoundGrid(ScriptedGrid(scripted), {1: "site-a", 2: "site-b", 3: "site-c"})
    outcome = run_federation(grid, dp_config(dp="none", rounds=2, min_sites=2))
    assert sorted(s["site"] for s in outcome.sites) == list(NAMES)
    for record in outcome.rounds:
        assert [s["site"] for s in record["sites"]] == list(NAMES)
    assert grid.report()["declared_otherwise"] == [
        {"node": "3", "site": "site-c", "declared": "site-a"}]


def test_a_coordinators_run_binds_names_from_its_registry_a_simulation_does_not(tmp_path):
    from server.rounds.identity import KeyBoundGrid, key_bound

    run_dir = tmp_path / "state" / "runs" / "r1"
    run_dir.mkdir(parents=True)
    assert key_bound(object(), run_dir) is None  # no registry: simulation names
    (tmp_path / "state" / "sites.json").write_text(json.dumps(
        {"site-a": {"node_id": "7", "fingerprint": "f"}}))
    bound = key_bound(object(), run_dir)
    assert isinstance(bound, KeyBoundGrid) and bound.names == {7: "site-a"}
    # A site registered while the run goes on is named by its key at its first reply.
    (tmp_path / "state" / "sites.json").write_text(json.dumps(
        {"site-a": {"node_id": "7", "fingerprint": "f"},
         "site-b": {"node_id": "9", "fingerprint": "g"}}))
    assert bound.name_of(9) == "site-b"
    assert bound.name_of(11) == "unregistered node 11"


class AppSite:
    """A SuperNode running the real ClientApp in process, with its own state directory."""

    def __init__(self, app, node: int, name: str, state_dir: Path) -> None:
        self.app, self.name = app, name
        self.context = Context(run_id=1, node_id=node, state=RecordDict(), run_config={},
                               node_config={"state-dir": str(state_dir), "site-name": name})

    def answer(self, msg: Message) -> RecordDict:
        reply = self.app(msg, self.context)
        if reply.has_error():
            raise RuntimeError(reply.error.reason)
        return reply.content


def test_a_coordinator_crash_then_resume_charges_each_round_once(tmp_path, monkeypatch):
    from client.app import build_client_app
    from client.privacy import PrivacyLedger, ledger_path
    from server.outputs import per_site_epsilon
    from server.rounds import load_checkpoint, run_federation, save_checkpoint

    sites = {name: hospital(name, seed) for seed, name in enumerate(NAMES, start=1)}
    monkeypatch.setattr("client.site.load_site",
                        lambda node_config, run_cfg: sites[node_config["site-name"]])
    cfg = dp_config()
    app = build_client_app(cfg.to_flower())
    nodes = [AppSite(app, i + 1, name, tmp_path / name) for i, name in enumerate(NAMES)]

    class CoordinatorCrash(Exception):
        pass

    def save_then_crash(ckpt):
        save_checkpoint(tmp_path / "checkpoint", ckpt)
        if ckpt.round == 2:  # round 3's updates are already out: the sites charged them
            raise CoordinatorCrash

    with pytest.raises(CoordinatorCrash):
        run_federation(ScriptedGrid(nodes), cfg, checkpoint=save_then_crash)
    for name in NAMES:
        # Round 0: the noised class counts and feature centre at set-up.
        assert [e.round for e in PrivacyLedger.open(ledger_path(tmp_path / name)).entries] \
            == [0, 0, 1, 2, 3]
    ckpt = load_checkpoint(tmp_path / "checkpoint")
    assert ckpt is not None and ckpt.round == 2

    grid = ScriptedGrid(nodes)  # the same SuperNodes, a restarted coordinator
    resumed = run_federation(grid, cfg, resume=ckpt)
    assert [r["round"] for r in resumed.rounds] == [1, 2, 3, 4] and not resumed.stopped
    spent = per_site_epsilon(resumed.rounds)
    for name in NAMES:
        ledger = PrivacyLedger.open(ledger_path(tmp_path / name))
        # Round 3 charged once; after round 4, the final model's noised validation.
        assert [e.round for e in ledger.entries] == [0, 0, 1, 2, 3, 4, 4]
        assert spent[name] == pytest.approx(ledger.epsilon(ledger.delta))
        assert spent[name] <= cfg.epsilon + 1e-6
    # Every round config told the sites the run's key and what they had reported so far.
    last = [m for m in grid.sent if m.metadata.message_type == MessageType.TRAIN][-1]
    assert last.content[CONFIG][RUN_KEY] == ckpt.run_key
    assert {k for k in last.content[CONFIG] if k.startswith(SPENT_PREFIX)} == {
        SPENT_PREFIX + n for n in NAMES}

    # A site whose ledger was deleted meanwhile is refused on the next resume.
    ledger_path(tmp_path / "site-b").unlink()
    again = run_federation(ScriptedGrid(nodes), cfg, resume=ckpt)
    assert "site-b" in again.stopped and "backup restore" in again.stopped


def test_a_repeated_distributed_release_is_sent_again_and_not_charged(tmp_path):
    from client.distributed_round import Release
    from client.dp import site_privacy
    from client.privacy import LedgerEntry
    from client.privacy_guard import replayed_release

    cfg = dp_config(dp="distributed", epsilon=4.0)
    privacy = site_privacy("site-a", 48, {"state-dir": str(tmp_path)}, cfg)
    calls = []

    def release() -> Release:  # charges the ledger, as client.distributed_round does
        calls.append(1)
        privacy.ledger.record(LedgerEntry("run", 1, 3.0, 1.0, 1, "2026-01-01T00:00:00+00:00",
                                          privacy.budget.delta))
        return Release([np.random.default_rng().normal(size=5)],
                       privacy.ledger.epsilon(privacy.budget.delta), privacy.budget.delta)

    rc, inputs = RoundConfig("digest", server_round=1), [np.zeros(5)]
    config = {RUN_KEY: "run"}
    first = replayed_release(privacy, rc, config, inputs, release)
    again = replayed_release(privacy, rc, config, inputs, release)
    assert len(calls) == 1 and len(privacy.ledger.entries) == 1
    assert np.array_equal(first.vector[0], again.vector[0])
    assert again.epsilon == pytest.approx(first.epsilon) and again.delta == first.delta
    replayed_release(privacy, RoundConfig("digest", server_round=2), config, inputs, release)
    assert len(calls) == 2  # another request: a new release


def test_a_ledger_deleted_between_two_runs_is_caught_by_the_coordinators_book(
        tmp_path, monkeypatch):
    from client.app import build_client_app
    from client.privacy import ledger_path
    from server.outputs import per_site_epsilon
    from server.rounds import FederationError, run_federation
    from server.rounds.spend_book import SpendBook

    sites = {name: hospital(name, seed) for seed, name in enumerate(NAMES, start=1)}
    monkeypatch.setattr("client.site.load_site",
                        lambda node_config, run_cfg: sites[node_config["site-name"]])
    book = SpendBook(tmp_path / "coordinator" / "site-spend.json")
    first_cfg = dp_config(rounds=2, epsilon=3.0)
    app = build_client_app(first_cfg.to_flower())
    nodes = [AppSite(app, i + 1, name, tmp_path / name) for i, name in enumerate(NAMES)]
    first = run_federation(ScriptedGrid(nodes), first_cfg, spend_book=book)
    assert not first.stopped
    assert SpendBook(book.path).spent == pytest.approx(per_site_epsilon(first.rounds))

    ledger_path(tmp_path / "site-b").unlink()  # between runs: a new run has no record
    second_cfg = dp_config(rounds=2, epsilon=6.0)
    app = build_client_app(second_cfg.to_flower())
    nodes = [AppSite(app, i + 1, name, tmp_path / name) for i, name in enumerate(NAMES)]
    with pytest.raises(FederationError, match=r"site-b: .*backup restore"):
        run_federation(ScriptedGrid(nodes), second_cfg, spend_book=SpendBook(book.path))
