"""A site's privacy ledger: accounting against Opacus, persistence, atomic writes,
refusal of corrupted files, budget validation and noise calibration."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from client.privacy import (
    LEDGER_FILE,
    BudgetError,
    LedgerEntry,
    LedgerError,
    PrivacyBudget,
    PrivacyLedger,
    calibrate_noise,
    check_round,
    ledger_path,
)

DELTA = 1e-5
TS = "2025-06-01T12:00:00+00:00"
# (noise, sample rate, steps) of successive rounds; rounds 1 and 2 share a pair.
ROUNDS = [(1.1, 0.05, 30), (1.1, 0.05, 20), (2.0, 0.1, 25), (0.8, 0.02, 40)]


def _entry(rnd: int, sigma: float, q: float, steps: int, run_id: str = "run-a") -> LedgerEntry:
    return LedgerEntry(run_id=run_id, round=rnd, noise_multiplier=sigma, sample_rate=q,
                       steps=steps, timestamp=TS)


def _ledger(path: Path, rounds=ROUNDS, accountant: str = "rdp",
            run_id: str = "run-a") -> PrivacyLedger:
    ledger = PrivacyLedger.open(path, accountant)
    for i, (sigma, q, steps) in enumerate(rounds, start=1):
        ledger.record(_entry(i, sigma, q, steps, run_id))
    return ledger


def _stepped(accountant, rounds) -> float:
    for sigma, q, steps in rounds:
        for _ in range(steps):
            accountant.step(noise_multiplier=sigma, sample_rate=q)
    return accountant.get_epsilon(delta=DELTA)


# --- accounting ---------------------------------------------------------------------


def test_epsilon_equals_opacus_rdp_accountant_stepped(tmp_path: Path):
    ledger = _ledger(tmp_path / LEDGER_FILE)
    expected = _stepped(RDPAccountant(), ROUNDS)
    assert 0 < expected < math.inf
    assert ledger.epsilon(DELTA) == pytest.approx(expected, rel=1e-12)
    # Epsilon grows with every round recorded: a prefix of the ledger spends less.
    assert _ledger(tmp_path / "prefix.json", ROUNDS[:3]).epsilon(DELTA) < expected
    assert PrivacyLedger.open(tmp_path / "empty.json").epsilon(DELTA) == 0.0


def test_history_merges_identical_pairs(tmp_path: Path):
    rounds = [(1.1, 0.05, 30), (2.0, 0.1, 25), (1.1, 0.05, 20)]
    ledger = _ledger(tmp_path / LEDGER_FILE, rounds)
    assert ledger.history() == [(1.1, 0.05, 50), (2.0, 0.1, 25)]


def test_merged_history_same_epsilon_with_fewer_rdp_curves(tmp_path: Path, monkeypatch):
    from opacus.accountants.analysis import rdp as analysis

    from client.privacy import accounting

    pairs = [(1.0, 0.05), (1.3, 0.05), (1.7, 0.08)]
    rounds = [(*pairs[r % 3], 20 + r) for r in range(30)]
    ledger = _ledger(tmp_path / LEDGER_FILE, rounds)
    merged = ledger.history()
    assert len(merged) == 3 and sum(s for *_, s in merged) == sum(s for *_, s in rounds)

    acc = RDPAccountant()
    acc.history = list(rounds)
    eps_unmerged = acc.get_epsilon(delta=DELTA)
    # The ledger's account computes one RDP curve per distinct (noise, rate) pair, not
    # one per round: count the curves it asks Opacus for.
    calls = []
    real = analysis.compute_rdp

    def counting(**kwargs):
        calls.append((kwargs["noise_multiplier"], kwargs["q"]))
        return real(**kwargs)

    accounting._rdp_per_step.cache_clear()
    monkeypatch.setattr(analysis, "compute_rdp", counting)
    assert ledger.epsilon(DELTA) == pytest.approx(eps_unmerged, rel=1e-9)
    assert sorted(set(calls)) == sorted(pairs) and len(calls) == len(pairs)
    accounting._rdp_per_step.cache_clear()


def test_prv_accountant_matches_opacus_prv(tmp_path: Path):
    rounds = [(1.1, 0.05, 30), (2.0, 0.1, 25)]
    ledger = _ledger(tmp_path / LEDGER_FILE, rounds, accountant="prv")
    prv = PRVAccountant()
    prv.history = list(rounds)
    expected = prv.get_epsilon(delta=DELTA)
    eps = ledger.epsilon(DELTA)
    assert eps == pytest.approx(expected, rel=1e-6)
    rdp = _ledger(tmp_path / "rdp.json", rounds).epsilon(DELTA)
    # PRV is the tighter accountant: positive, finite, not above RDP (bar its error).
    assert 0 < eps <= rdp * 1.01
    assert PrivacyLedger.open(ledger.path, "prv").summary(DELTA)["accountant"] == "prv"


def test_epsilon_after_projects_without_recording(tmp_path: Path):
    ledger = _ledger(tmp_path / LEDGER_FILE)
    before = ledger.path.read_bytes()
    projected = ledger.epsilon_after(1.5, 0.05, 40, DELTA)
    expected = _stepped(RDPAccountant(), [*ROUNDS, (1.5, 0.05, 40)])
    assert projected == pytest.approx(expected, rel=1e-9)
    assert projected > ledger.epsilon(DELTA)
    assert len(ledger.entries) == len(ROUNDS)
    assert ledger.path.read_bytes() == before


# --- persistence --------------------------------------------------------------------


def test_restart_reads_the_same_account_and_runs_accumulate(tmp_path: Path):
    path = ledger_path(tmp_path / "state")
    assert path == tmp_path / "state" / LEDGER_FILE
    first = _ledger(path, ROUNDS[:2], run_id="run-a")
    assert json.loads(path.read_text())["format"] == "cancer-alpha-privacy-ledger"

    reopened = PrivacyLedger.open(path)  # a site restart
    assert reopened.entries == first.entries
    assert reopened.epsilon(DELTA) == first.epsilon(DELTA)

    for i, (sigma, q, steps) in enumerate(ROUNDS[2:], start=1):
        reopened.record(_entry(i, sigma, q, steps, run_id="run-b"))
    again = PrivacyLedger.open(path)
    assert len(again.entries) == len(ROUNDS)
    assert again.epsilon(DELTA) == pytest.approx(_stepped(RDPAccountant(), ROUNDS), rel=1e-12)
    assert again.epsilon(DELTA) > first.epsilon(DELTA)
    summary = again.summary(DELTA)
    assert summary["runs"] == ["run-a", "run-b"]
    assert summary["entries"] == len(ROUNDS)
    assert summary["steps"] == sum(s for *_, s in ROUNDS)
    assert summary["path"] == str(path)


def test_record_refuses_invalid_entries(tmp_path: Path):
    with pytest.raises(ValueError, match="noise_multiplier"):
        _entry(1, math.nan, 0.05, 10)
    with pytest.raises(ValueError, match="steps"):
        _entry(1, 1.0, 0.05, -1)
    with pytest.raises(ValueError, match="sample_rate"):
        _entry(1, 1.0, 1.5, 10)
    ledger = PrivacyLedger.open(tmp_path / LEDGER_FILE)
    with pytest.raises(TypeError):
        ledger.record({"run_id": "x"})  # type: ignore[arg-type]
    assert not ledger.path.exists()


# --- atomic write -------------------------------------------------------------------


class _HalfWrittenFile:
    """A file that takes the first 20 bytes of a write, then fails (a full disk)."""

    def __init__(self, fh) -> None:
        self.fh = fh

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.fh.close()

    def write(self, data: bytes) -> int:
        self.fh.write(data[:20])
        raise OSError("disk full")


@pytest.mark.parametrize("failing", ["write", "fsync", "replace"])
def test_failed_write_keeps_the_previous_file(tmp_path: Path, monkeypatch, failing: str):
    ledger = _ledger(tmp_path / LEDGER_FILE, ROUNDS[:2])
    before = ledger.path.read_bytes()
    real_fdopen = os.fdopen

    def half_written(fd, *args, **kwargs):
        return _HalfWrittenFile(real_fdopen(fd, *args, **kwargs))

    def boom(*args, **kwargs):
        raise OSError("disk full")

    target = {"write": (os, "fdopen", half_written), "fsync": (os, "fsync", boom),
              "replace": (os, "replace", boom)}[failing]
    monkeypatch.setattr(*target)
    with pytest.raises(OSError, match="disk full"):
        ledger.record(_entry(3, 2.0, 0.1, 25))
    monkeypatch.undo()
    assert os.fdopen is real_fdopen

    assert ledger.path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [LEDGER_FILE]  # no temp left
    assert len(ledger.entries) == 2  # the failed entry is not counted either
    ledger.record(_entry(3, 2.0, 0.1, 25))
    assert len(PrivacyLedger.open(ledger.path).entries) == 3


def test_failed_first_write_leaves_no_file(tmp_path: Path, monkeypatch):
    ledger = PrivacyLedger.open(tmp_path / LEDGER_FILE)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        ledger.record(_entry(1, 1.0, 0.05, 10))
    assert list(tmp_path.iterdir()) == []


# --- corrupted files ----------------------------------------------------------------


def _valid_payload() -> dict:
    return {"format": "cancer-alpha-privacy-ledger", "version": 1, "accountant": "rdp",
            "entries": [_entry(1, 1.1, 0.05, 30).to_dict()]}


def _with_entry(**changes) -> str:
    payload = _valid_payload()
    payload["entries"][0].update(changes)
    return json.dumps(payload)


CORRUPT = {
    "invalid json": ('{"format": "cancer-alpha-privacy-ledger", "entr', "not valid JSON"),
    "empty file": ("", "not valid JSON"),
    "wrong format": (json.dumps({**_valid_payload(), "format": "something-else"}),
                     "not a privacy ledger"),
    "unknown version": (json.dumps({**_valid_payload(), "version": 4}), "version 4"),
    "delta in a version 1 entry": (_with_entry(delta=1e-5), "keys"),
    "negative steps": (_with_entry(steps=-5), "steps"),
    "nan noise": (_with_entry(noise_multiplier=math.nan), "noise_multiplier"),
    "missing key": (json.dumps({**_valid_payload(), "entries": [{"round": 1}]}), "keys"),
    "entries not a list": (json.dumps({**_valid_payload(), "entries": {}}), "entries"),
    "prv ledger opened as rdp": (json.dumps({**_valid_payload(), "accountant": "prv"}),
                                 "accounted with 'prv'"),
}


@pytest.mark.parametrize("case", list(CORRUPT))
def test_corrupted_ledger_is_refused_and_untouched(tmp_path: Path, case: str):
    text, what = CORRUPT[case]
    path = tmp_path / LEDGER_FILE
    path.write_text(text)
    before = path.read_bytes()
    with pytest.raises(LedgerError) as info:
        PrivacyLedger.open(path, "rdp")
    message = str(info.value)
    assert str(path) in message
    assert what in message
    assert path.read_bytes() == before
    # No ledger object exists over a file that cannot be read, so nothing can record.
    with pytest.raises(LedgerError):
        PrivacyLedger(path)
    assert path.read_bytes() == before


def test_record_refuses_when_the_file_changed_underneath(tmp_path: Path):
    ledger = _ledger(tmp_path / LEDGER_FILE, ROUNDS[:2])
    ledger.path.write_text("{ broken")
    with pytest.raises(LedgerError, match="not valid JSON"):
        ledger.record(_entry(3, 2.0, 0.1, 25))
    assert ledger.path.read_text() == "{ broken"

    # Truncated to fewer entries than this object read: recording would hide spending.
    other = _ledger(tmp_path / "b.json", ROUNDS[:2])
    payload = json.loads(other.path.read_text())
    payload["entries"] = payload["entries"][:1]
    other.path.write_text(json.dumps(payload))
    before = other.path.read_bytes()
    with pytest.raises(LedgerError, match="no longer starts with"):
        other.record(_entry(3, 2.0, 0.1, 25))
    assert other.path.read_bytes() == before


# --- budget -------------------------------------------------------------------------


@pytest.mark.parametrize("epsilon", [-1.0, 0.0, math.nan, None, math.inf])
def test_budget_rejects_bad_epsilon(epsilon):
    with pytest.raises(BudgetError, match="epsilon"):
        PrivacyBudget.for_site(epsilon, 1e-5, 100)


@pytest.mark.parametrize("delta", [1.0, 1.5, 0.0, -1e-5, math.nan])
def test_budget_rejects_bad_delta(delta):
    with pytest.raises(BudgetError, match="delta") as info:
        PrivacyBudget.for_site(8.0, delta, 100)
    assert repr(delta) in str(info.value)


def test_budget_default_delta():
    assert PrivacyBudget.for_site(8.0, None, 250) == PrivacyBudget(8.0, 1 / 2500)
    assert PrivacyBudget.for_site(3, 1e-6, 250).delta == 1e-6
    with pytest.raises(BudgetError, match="n_patients"):
        PrivacyBudget.for_site(8.0, None, 0)


# --- calibration and refusal --------------------------------------------------------


def _projected_rdp(ledger: PrivacyLedger, sigma: float, q: float, steps: int,
                   rounds: int, delta: float) -> float:
    acc = RDPAccountant()
    acc.history = [*ledger.history(), (sigma, q, steps * rounds)]
    return acc.get_epsilon(delta=delta)


def test_calibrated_noise_is_within_budget_and_near_minimal(tmp_path: Path):
    ledger = _ledger(tmp_path / LEDGER_FILE, [(1.5, 0.05, 40), (1.6, 0.05, 40)])
    budget = PrivacyBudget(epsilon=8.0, delta=DELTA)
    q, steps, rounds = 0.05, 40, 6
    sigma = calibrate_noise(ledger, budget, q, steps, rounds)
    assert 0.3 <= sigma <= 100
    assert _projected_rdp(ledger, sigma, q, steps, rounds, DELTA) <= budget.epsilon
    assert _projected_rdp(ledger, sigma * 0.95, q, steps, rounds, DELTA) > budget.epsilon
    # On the 1e-3 grid, and the grid point below does not fit: the tolerance holds.
    assert sigma == round(sigma, 3)
    assert _projected_rdp(ledger, sigma - 1e-3, q, steps, rounds, DELTA) > budget.epsilon
    assert check_round(ledger, budget, sigma, q, steps) is None
    # Fewer rounds to plan for: less noise needed.
    assert calibrate_noise(ledger, budget, q, steps, 1) < sigma


def test_calibrated_noise_with_prv(tmp_path: Path):
    ledger = _ledger(tmp_path / LEDGER_FILE, [(1.5, 0.05, 40)], accountant="prv")
    budget = PrivacyBudget(epsilon=6.0, delta=DELTA)
    q, steps, rounds = 0.05, 40, 3
    sigma = calibrate_noise(ledger, budget, q, steps, rounds)

    def prv(s: float) -> float:
        acc = PRVAccountant()
        acc.history = [*ledger.history(), (s, q, steps * rounds)]
        return acc.get_epsilon(delta=DELTA)

    assert prv(sigma) <= budget.epsilon < prv(sigma - 1e-3)
    # The tighter accountant needs no more noise than RDP for the same plan.
    assert sigma <= calibrate_noise(_ledger(tmp_path / "rdp.json", [(1.5, 0.05, 40)]),
                                    budget, q, steps, rounds)


def test_exhausted_budget_raises(tmp_path: Path):
    ledger = _ledger(tmp_path / LEDGER_FILE, [(0.5, 0.2, 200)])
    spent = ledger.epsilon(DELTA)
    budget = PrivacyBudget(epsilon=spent * 0.9, delta=DELTA)
    with pytest.raises(BudgetError, match="exhausted") as info:
        calibrate_noise(ledger, budget, 0.05, 40, 3)
    assert f"spent epsilon {spent:.4g}" in str(info.value)
    assert "remaining 0" in str(info.value)


def test_check_round(tmp_path: Path):
    ledger = _ledger(tmp_path / LEDGER_FILE, ROUNDS[:2])
    spent = ledger.epsilon(DELTA)
    after = ledger.epsilon_after(1.2, 0.05, 40, DELTA)
    assert spent < after
    # A round that lands exactly on the budget fits; 1 % less budget and it does not.
    assert check_round(ledger, PrivacyBudget(after, DELTA), 1.2, 0.05, 40) is None
    budget = PrivacyBudget(epsilon=after * 0.99, delta=DELTA)
    reason = check_round(ledger, budget, 1.2, 0.05, 40)
    assert reason is not None
    assert f"epsilon to {after:.4g} > budget {budget.epsilon:.4g}" in reason
    assert f"spent {spent:.4g}" in reason
    assert check_round(ledger, budget, 50.0, 0.05, 40) is None  # more noise fits
    assert len(ledger.entries) == 2  # checking records nothing
