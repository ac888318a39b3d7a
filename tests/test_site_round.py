"""One site's side of a round: the setup it keeps, training, local DP (no Flower processes)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from flwr.app import Context, Message, MessageType, RecordDict
from scripted_grid import SCHEMA, synthetic_data

from client.site import Site, initial_state, train_round
from common.config import ModelConfig, RunConfig
from common.consortium_setup import ConsortiumSetup, SetupMissing, is_setup_missing
from common.preprocessing import Standardizer
from common.protocol import CONFIG, EPSILON, RoundConfig, SiteMetrics

TINY = ModelConfig(d_model=8, n_heads=2, n_layers=1, tokens_per_modality=1)


pytestmark = pytest.mark.usefixtures("task_identity", "one_torch_thread")


def make_site() -> tuple[Site, ConsortiumSetup]:
    train, val = synthetic_data(48, seed=1), synthetic_data(15, seed=2)
    setup = ConsortiumSetup(SCHEMA, Standardizer.fit(train),
                            np.array([1.0, 0.5, 2.0], dtype=np.float32),
                            site_patients={"site-a": 48.0})
    return Site("site-a", train, val), setup


def test_setup_round_trips_and_is_kept_per_run():
    _, setup = make_site()
    back = ConsortiumSetup.from_records(setup.to_message_content())
    assert back.schema == setup.schema and back.digest() == setup.digest()
    np.testing.assert_array_equal(back.class_weight, setup.class_weight)
    state = RecordDict()
    with pytest.raises(SetupMissing) as missing:
        ConsortiumSetup.stored(state, setup.digest())
    assert is_setup_missing(str(missing.value))
    setup.store(state)
    assert ConsortiumSetup.stored(state, setup.digest()).digest() == setup.digest()
    other = replace(setup, class_weight=np.ones(3, dtype=np.float32))
    assert other.digest() != setup.digest()
    with pytest.raises(SetupMissing, match=f"holds setup {setup.digest()}"):
        ConsortiumSetup.stored(state, other.digest())


def test_client_app_keeps_the_setup_and_refuses_rounds_without_it():
    from client.app import build_client_app
    from common.consortium_setup import is_setup_missing, setup_digest_of

    _, setup = make_site()
    app = build_client_app()
    context = Context(run_id=7, node_id=1, node_config={}, state=RecordDict(), run_config={})
    reply = app(Message(setup.to_message_content(), dst_node_id=1,
                        message_type=MessageType.QUERY), context)
    assert setup_digest_of(reply.content) == setup.digest()
    assert ConsortiumSetup.stored(context.state, setup.digest()).schema == SCHEMA
    fresh = Context(run_id=7, node_id=1, node_config={}, state=RecordDict(), run_config={})
    train = Message(RecordDict({CONFIG: RoundConfig(setup.digest()).to_record()}),
                    dst_node_id=1, message_type=MessageType.TRAIN)
    # Answered with an error reply, not raised: a raised exception stops a SuperNode.
    reply = app(train, fresh)
    assert reply.has_error() and is_setup_missing(reply.error.reason)


def test_train_round_changes_the_weights_and_reports_everything():
    site, setup = make_site()
    cfg = RunConfig(model=TINY, seed=0, local_epochs=2, rounds=3)
    start = initial_state(setup, cfg)
    new, metrics = train_round(site, start, setup, RoundConfig(setup.digest(), local_epochs=2,
                                                               server_round=1), cfg)
    assert set(new) == set(start)
    assert any(not torch.equal(new[k], start[k]) for k in start)
    assert isinstance(metrics, SiteMetrics) and metrics.has_validation
    assert metrics.num_examples == 48 and np.isfinite(metrics.train_loss)
    assert metrics.val_examples == 15 and metrics.confusion.shape == (3, 3)
    assert metrics.confusion.sum() == 15 and metrics.val_loss_sum > 0
    assert metrics.epsilon is None  # no DP
    assert SiteMetrics.from_record(metrics.to_record()).num_examples == 48


def test_dp_round_charges_the_ledger_once_and_is_refused_when_the_budget_is_spent(tmp_path):
    from client.dp import RoundRefused, site_privacy
    from client.privacy import PrivacyLedger, ledger_path

    site, setup = make_site()
    cfg = RunConfig(model=TINY, seed=0, local_epochs=1, rounds=2, dp="local", epsilon=4.0)
    node = {"state-dir": str(tmp_path)}
    privacy = site_privacy(site.name, site.train.n, node, cfg)
    rc = RoundConfig(setup.digest(), server_round=1)
    new, metrics = train_round(site, initial_state(setup, cfg), setup, rc, cfg,
                               privacy=privacy, run_id="r1")
    ledger = PrivacyLedger.open(ledger_path(tmp_path))
    assert len(ledger.entries) == 1 and ledger.entries[0].round == 1
    spent = ledger.epsilon(privacy.budget.delta)
    assert metrics.epsilon == pytest.approx(spent) and 0 < spent <= 4.0 + 1e-6
    assert metrics.to_record()[EPSILON] == pytest.approx(spent)
    assert metrics.noise_multiplier > 0

    # A lifetime budget below what is already spent: the site declines, the ledger is
    # untouched.
    spent_up = site_privacy(site.name, site.train.n, {**node, "epsilon": spent / 2}, cfg)
    before = ledger_path(tmp_path).read_bytes()
    with pytest.raises(RoundRefused):
        train_round(site, new, setup, replace(rc, server_round=2), cfg, privacy=spent_up,
                    run_id="r1")
    assert ledger_path(tmp_path).read_bytes() == before
