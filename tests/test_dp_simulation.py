"""Local DP end to end: sites release noised class counts, train with DP-SGD, release the
final model's noised validation counts, keep their ledgers across runs, refuse releases
that would exceed their budget, and the federation stops cleanly."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from common.config import ModelConfig, RunConfig, TrainConfig

pytestmark = pytest.mark.e2e


def _ledgers(state_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text())
            for p in sorted(state_dir.glob("*/privacy-ledger.json"))}


@pytest.fixture(scope="module")
def base(tmp_path_factory, bundled_dir_module) -> RunConfig:
    root = tmp_path_factory.mktemp("dp")
    return RunConfig(
        data=str(bundled_dir_module("brca")), partition="site", sites=3, rounds=2,
        local_epochs=1, seed=0, dp="local", strategy="fedavg", state_dir=str(root / "state"),
        out=str(root / "run"),
        model=ModelConfig(d_model=32, n_heads=4, n_layers=1, tokens_per_modality=2),
        train=TrainConfig(),
    )


def test_budget_is_kept_across_runs_and_enforced(base: RunConfig, tmp_path: Path):
    from server.rounds import FederationError
    from simulations.runner import simulate

    state = Path(base.state_dir)
    first = simulate(replace(base, epsilon=3.0, out=str(tmp_path / "r1")), compare=False,
                     show_progress=False)
    metrics = json.loads((first / "metrics.json").read_text())
    spent = metrics["per_site_epsilon"]
    assert len(spent) == 3
    assert all(0 < eps <= 3.0 + 1e-6 for eps in spent.values()), spent
    ledgers = _ledgers(state)
    assert set(ledgers) == set(spent)
    # the class counts, the feature centre, 2 rounds of DP-SGD, the final validation
    assert all(len(ledger["entries"]) == 5 for ledger in ledgers.values())

    # A second run with a larger lifetime budget spends only what is left.
    second = simulate(replace(base, epsilon=6.0, out=str(tmp_path / "r2")), compare=False,
                      show_progress=False)
    spent2 = json.loads((second / "metrics.json").read_text())["per_site_epsilon"]
    for site, eps in spent2.items():
        assert spent[site] < eps <= 6.0 + 1e-6
    assert all(len(ledger["entries"]) == 10 for ledger in _ledgers(state).values())

    # The budget is (nearly) spent: sites decline, too few remain, the run stops with the
    # reason; a declining site's ledger is untouched, and no site ever exceeds its budget
    # (a site that did train before the stop has spent that round: its update left it).
    from client.privacy import PrivacyLedger

    before = {p: p.read_bytes() for p in state.glob("*/privacy-ledger.json")}
    with pytest.raises(FederationError, match=r"class counts|declined the round"):
        simulate(replace(base, epsilon=6.0, out=str(tmp_path / "r3")), compare=False,
                 show_progress=False)
    after = {p: p.read_bytes() for p in state.glob("*/privacy-ledger.json")}
    assert any(after[p] == before[p] for p in before)
    for path in after:
        ledger = PrivacyLedger.open(path)
        assert len(ledger.entries) >= 10
        assert ledger.delta == 1e-5  # the default: not derived from the patient count
        assert ledger.epsilon(ledger.delta) <= 6.0 + 1e-6


def test_central_dp_run_accounts_its_budget(base: RunConfig, tmp_path: Path):
    from simulations.runner import simulate

    run = simulate(replace(base, dp="central", epsilon=8.0, out=str(tmp_path / "central")),
                   compare=False, show_progress=False)
    metrics = json.loads((run / "metrics.json").read_text())
    central = metrics["central_dp"]
    assert central["noise_multiplier"] > 0
    assert central["delta"] == pytest.approx(1 / (10 * len(metrics["sites"])))
    spent = [r["central_epsilon"] for r in metrics["rounds"]]
    assert spent == sorted(spent) and 0 < spent[-1] <= 8.0 + 1e-6
    assert central["epsilon_spent"] == pytest.approx(spent[-1])
    assert metrics["per_site_epsilon"] is None  # no site-side DP in this mode
    lineage = json.loads((run / "model" / "bundle.json").read_text())["lineage"]
    assert lineage["central_dp"]["epsilon_budget"] == 8.0


def test_simulate_command_defaults_to_distributed_dp(base: RunConfig, tmp_path: Path):
    """`cancer-alpha simulate` with no privacy options: distributed DP, epsilon 8 per
    site, and the class-centroid model fit in its two rounds."""
    from typer.testing import CliRunner

    from common.cli import build_app

    out = tmp_path / "run"
    result = CliRunner().invoke(build_app(), [
        "simulate", "--data", base.data, "--sites", "3", "--rounds", "2", "--no-compare",
        "--no-report",
        "--out", str(out), "--state-dir", str(tmp_path / "state")])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "config.json").read_text())["run_config"]
    assert saved["dp"] == "distributed" and saved["epsilon"] == 8.0
    assert saved["model"] == ModelConfig(kind="centroid").to_dict()
    assert saved["strategy"] == "fedavg"
    assert saved["local_epochs"] == RunConfig().local_epochs and saved["rounds"] == 2
    metrics = json.loads((out / "metrics.json").read_text())
    spent = metrics["per_site_epsilon"]
    # The noise plan spends the whole budget over the run's releases, no more.
    assert len(spent) == 3 and all(e == pytest.approx(8.0, abs=2e-3) for e in spent.values())
    assert metrics["distributed_dp"]["noise_plan"]["min_sites"] == 3
    assert "distributed DP: 3 sites spent epsilon" in result.output
