"""The delta a site accounts at, recorded in every ledger entry, and ``site budget``:
epsilon at the ledger's own delta, exit code 1 over budget."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from client.cli import app
from client.privacy import LedgerEntry, PrivacyLedger, ledger_path

TS = "2025-06-01T12:00:00+00:00"
# (noise, sample rate, steps) of successive rounds.
ROUNDS = [(1.1, 0.05, 30), (1.1, 0.05, 20), (2.0, 0.1, 25), (0.8, 0.02, 40)]
# A ledger as written before entries recorded their delta.
VERSION_1_LEDGER = {
    "format": "cancer-alpha-privacy-ledger", "version": 1, "accountant": "rdp",
    "entries": [{"run_id": "run-a", "round": 1, "noise_multiplier": 1.1, "sample_rate": 0.05,
                 "steps": 30, "timestamp": TS}]}


def _ledger(path: Path, rounds=ROUNDS) -> PrivacyLedger:
    """A ledger of ``rounds`` whose entries record no delta (as version 1 ledgers)."""
    ledger = PrivacyLedger.open(path)
    for i, (sigma, q, steps) in enumerate(rounds, start=1):
        ledger.record(LedgerEntry(run_id="run-a", round=i, noise_multiplier=sigma,
                                  sample_rate=q, steps=steps, timestamp=TS))
    return ledger


# --- the ledger ---------------------------------------------------------------------


def _entry_with_delta(rnd: int, delta: float | None) -> LedgerEntry:
    sigma, q, steps = ROUNDS[rnd - 1]
    return LedgerEntry(run_id="run-a", round=rnd, noise_multiplier=sigma, sample_rate=q,
                       steps=steps, timestamp=TS, delta=delta)


def test_entries_record_their_delta_and_the_ledger_reports_the_latest(tmp_path: Path):
    path = ledger_path(tmp_path)
    ledger = PrivacyLedger.open(path)
    assert ledger.delta is None  # nothing recorded yet
    ledger.record(_entry_with_delta(1, 4e-4))
    ledger.record(_entry_with_delta(2, 4e-4))
    stored = json.loads(path.read_text())
    assert stored["version"] == 2
    assert [e["delta"] for e in stored["entries"]] == [4e-4, 4e-4]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # the account is the site's alone
    again = PrivacyLedger.open(path)
    assert again.delta == 4e-4 and again.recorded_deltas() == [4e-4]
    again.record(_entry_with_delta(3, 1e-5))  # the site changed its budget's delta
    assert again.delta == 1e-5 and again.recorded_deltas() == [4e-4, 1e-5]
    with pytest.raises(ValueError, match="delta"):
        _entry_with_delta(4, 1.5)


def test_version_1_ledger_stays_readable_and_appends_as_version_2(tmp_path: Path):
    path = ledger_path(tmp_path)
    path.write_text(json.dumps(VERSION_1_LEDGER))  # version 1: entries without delta
    old = PrivacyLedger.open(path)
    assert len(old.entries) == 1 and old.entries[0].delta is None and old.delta is None
    old.record(_entry_with_delta(2, 2e-5))
    stored = json.loads(path.read_text())
    assert stored["version"] == 2
    assert "delta" not in stored["entries"][0] and stored["entries"][1]["delta"] == 2e-5
    assert PrivacyLedger.open(path).delta == 2e-5


def test_a_dp_round_records_the_budgets_delta(tmp_path: Path, one_torch_thread):
    import numpy as np
    from flwr.supercore.task_identity import TaskIdentity
    from scripted_grid import SCHEMA, synthetic_data

    from client.dp import site_privacy
    from client.site import Site, initial_state, train_round
    from common.config import ModelConfig, RunConfig
    from common.consortium_setup import ConsortiumSetup
    from common.preprocessing import Standardizer
    from common.protocol import RoundConfig

    with pytest.MonkeyPatch.context() as mp:
        for name, value in (("_run_id", 7), ("_task_id", 1), ("_node_id", 1)):
            mp.setattr(TaskIdentity, name, value)
        train, val = synthetic_data(48, seed=1), synthetic_data(15, seed=2)
        setup = ConsortiumSetup(SCHEMA, Standardizer.fit(train),
                                np.array([1.0, 0.5, 2.0], dtype=np.float32),
                                site_patients={"site-a": 48.0})
        site = Site("site-a", train, val)
        cfg = RunConfig(model=ModelConfig(d_model=8, n_heads=2, n_layers=1,
                                          tokens_per_modality=1),
                        seed=0, local_epochs=1, rounds=2, dp="local", epsilon=4.0)
        start = initial_state(setup, cfg)
        for state_dir, node_delta, expected in ((tmp_path / "set", 3e-4, 3e-4),
                                                (tmp_path / "default", 0.0, 1e-5)):
            node = {"state-dir": str(state_dir), "delta": node_delta}
            privacy = site_privacy(site.name, site.train.n, node, cfg)
            train_round(site, start, setup, RoundConfig(setup.digest(), server_round=1), cfg,
                        privacy=privacy, run_id="r1")
            entry, = PrivacyLedger.open(ledger_path(state_dir)).entries
            assert entry.delta == pytest.approx(expected) == privacy.budget.delta


# --- `site budget` ------------------------------------------------------------------


def test_site_budget_command(tmp_path: Path):
    ledger = _ledger(ledger_path(tmp_path), ROUNDS)
    runner = CliRunner()
    result = runner.invoke(app, ["budget", "--state-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert f"{ledger.epsilon(1e-5):.4f}" in result.output
    # The ledger records no delta: the output says which one was assumed.
    assert "at delta 1e-05 (assumed: the ledger records no delta" in _flat(result.output)
    assert "run-a" in result.output

    result = runner.invoke(app, ["budget", "--state-dir", str(tmp_path), "--delta", "1e-6",
                                 "--epsilon-budget", "50"])
    assert result.exit_code == 0, result.output
    spent = ledger.epsilon(1e-6)
    assert f"{spent:.4f}" in result.output
    assert f"remaining {50 - spent:.4f}" in result.output

    empty = tmp_path / "new-site"
    empty.mkdir()
    result = runner.invoke(app, ["budget", "--state-dir", str(empty)])
    assert result.exit_code == 0, result.output
    assert "0.0000" in result.output
    assert not ledger_path(empty).exists()  # showing the budget creates nothing


def test_site_budget_command_corrupted_ledger(tmp_path: Path):
    path = ledger_path(tmp_path)
    path.write_text('{"format": "cancer-alpha-privacy-ledger", "version": 1, "entr')
    before = path.read_bytes()
    result = CliRunner().invoke(app, ["budget", "--state-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "not valid JSON" in re.sub(r"\s+", " ", result.output)
    assert path.read_bytes() == before


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def test_site_budget_reports_at_the_ledgers_delta(tmp_path: Path):
    ledger = PrivacyLedger.open(ledger_path(tmp_path))
    for rnd in (1, 2):
        ledger.record(_entry_with_delta(rnd, 2e-3))
    at_own, at_default = ledger.epsilon(2e-3), ledger.epsilon(1e-5)
    assert f"{at_own:.4f}" != f"{at_default:.4f}"  # the choice of delta shows
    runner = CliRunner()
    result = runner.invoke(app, ["budget", "--state-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    out = _flat(result.output)
    assert f"epsilon spent: {at_own:.4f} at delta 0.002 (the ledger's delta)" in out
    # An explicit --delta wins, and the output names the ledger's own.
    result = runner.invoke(app, ["budget", "--state-dir", str(tmp_path), "--delta", "1e-5"])
    out = _flat(result.output)
    assert f"epsilon spent: {at_default:.4f} at delta 1e-05" in out
    assert "the ledger accounts at delta 0.002" in out


def test_site_budget_exits_non_zero_when_the_budget_is_exceeded(tmp_path: Path):
    ledger = PrivacyLedger.open(ledger_path(tmp_path))
    for rnd in (1, 2, 3):
        ledger.record(_entry_with_delta(rnd, 1e-5))
    spent = ledger.epsilon(1e-5)
    runner = CliRunner()
    over = runner.invoke(app, ["budget", "--state-dir", str(tmp_path),
                               "--epsilon-budget", f"{spent * 0.9:.6f}"])
    assert over.exit_code == 1, over.output
    assert "budget exceeded" in over.output
    within = runner.invoke(app, ["budget", "--state-dir", str(tmp_path),
                                 "--epsilon-budget", f"{spent * 1.1:.6f}"])
    assert within.exit_code == 0, within.output
    assert "remaining" in within.output
