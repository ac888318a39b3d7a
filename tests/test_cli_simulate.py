"""``cancer-alpha simulate`` run again and again in one folder: every run's virtual
hospitals start with fresh privacy budgets unless the user keeps their ledgers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from common.cli import build_app

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("one_torch_thread")]


def _simulate(data: Path, *extra: str) -> tuple[int, str]:
    result = CliRunner().invoke(build_app(), [
        "simulate", "--data", str(data), "--sites", "3", "--rounds", "2", "--no-compare",
        "--no-report",
        *extra], env={"COLUMNS": "200"})
    return result.exit_code, result.output


def _run_dirs() -> list[Path]:
    return sorted(Path("runs").glob("sim-*"))


def test_repeated_runs_start_fresh_and_spent_kept_ledgers_end_in_one_line(
        bundled_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = bundled_dir("brca")
    for attempt in (1, 2):
        code, output = _simulate(data)
        assert code == 0, f"run {attempt}: {output}"
        # What the private model predicts per class is printed, every class named.
        assert "Recall per class" in output
        assert all(name.split("-")[0] in output for name in
                   ("Luminal A", "HER2", "Luminal B", "Basal", "Normal"))
    first, second = _run_dirs()
    for run in (first, second):
        spent = json.loads((run / "metrics.json").read_text())["per_site_epsilon"]
        assert len(spent) == 3 and all(0 < eps <= 8.0 + 1e-6 for eps in spent.values())
        assert len(list((run / "site-state").glob("*/privacy-ledger.json"))) == 3
    assert not Path("runs/site-state").exists()

    # Ledgers kept on purpose (--state-dir) and already spent: one line says so.
    code, output = _simulate(data, "--state-dir", str(first / "site-state"))
    assert code == 2
    assert output.count("error:") == 1, output
    message = " ".join(output[output.index("error:"):].split())  # as one line, unwrapped
    assert "3 of 3 virtual hospitals having already spent" in message
    assert "name a new --state-dir" in message
    assert "rejected" not in output and "warning" not in output.lower(), output
