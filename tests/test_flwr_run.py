"""``flwr run`` executes the apps declared in pyproject.toml, offline, on real data.

``flwr run`` starts a local SuperLink that keeps running after the run; the test finds
it (and anything it started) by the unique FLWR_HOME in its command line and stops it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from common.paths import bundled_data_root
from common.processes import processes_mentioning, stop_pids

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]


def test_flwr_run_trains_and_writes_a_run_directory(tmp_path):
    flwr = shutil.which("flwr", path=str(Path(sys.executable).parent))
    if flwr is None:
        pytest.skip("the flwr command is not installed next to this Python")
    try:
        data_root = bundled_data_root()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n'
        "options.num-supernodes = 3\noptions.backend.client-resources.num-cpus = 1\n"
    )
    out = tmp_path / "run"
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "CANCER_ALPHA_DATA": str(data_root),
        # flwr starts flower-superlink by name: the venv's bin must be on PATH.
        "PATH": f"{Path(flwr).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    overrides = (f'rounds=2 local-epochs=1 partition="iid" sites=3 dp="none" out="{out}" '
                 "model.d-model=64 model.n-heads=4")
    try:
        proc = subprocess.run(
            [flwr, "run", str(REPO), "local", "--run-config", overrides, "--stream"],
            env=env, capture_output=True, text=True, timeout=600,
        )
    finally:
        stop_pids(processes_mentioning(str(home)))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["rounds_run"] == 2
    assert len(metrics["sites"]) == 3
    assert 0.0 <= metrics["f1_macro"] <= 1.0
    assert (out / "model" / "weights.pt").is_file()
    assert not processes_mentioning(str(home))
