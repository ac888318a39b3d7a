"""The site's long-lived ClientApp worker, without a federation: a failing ClientApp
becomes an error reply and the worker goes on; the site's data is read once per worker;
the launcher runs the SuperNode in process isolation beside the worker, restarts a
worker that died, and keeps Flower's process per message on request. The worker in a
real federation is covered by ``test_deployment_e2e.py``."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from client import launcher, site_cache, worker, worker_process, worker_transfer


class _FakeClient:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


class _NoHeartbeat:
    def __init__(self, *_: Any) -> None:
        pass

    start = stop = lambda self: None


@pytest.fixture
def runtime(monkeypatch, task_identity) -> dict[str, list]:
    """The Runtime API calls a task makes, recorded instead of sent."""
    import flwr.supercore.heartbeat as heartbeat
    import flwr.supernode.runtime.run_clientapp as flower_task
    from flwr.app import Context, Message, RecordDict

    calls: dict[str, list] = {"replies": [], "outputs": []}
    message = Message(RecordDict(), dst_node_id=1, message_type="query")
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    run = SimpleNamespace(fab_id="org/app", fab_version="1.0")
    monkeypatch.setattr(worker, "runtime_client", lambda *a: _FakeClient())
    monkeypatch.setattr(heartbeat, "HeartbeatSender", _NoHeartbeat)
    monkeypatch.setattr(worker_transfer, "pull_task_input",
                        lambda client: (message, context, run, SimpleNamespace(hash_str="h")))
    monkeypatch.setattr(flower_task, "push_message",
                        lambda client, reply, ctx: calls["replies"].append(reply))
    monkeypatch.setattr(flower_task, "push_task_output",
                        lambda client, ctx, status, details: calls["outputs"].append(
                            (status, details)))
    return calls


def test_a_raising_clientapp_is_an_error_reply_and_the_worker_goes_on(runtime, monkeypatch):
    from flwr.app import Message, RecordDict

    runner = worker.TaskRunner("127.0.0.1:1")
    answers = iter([ZeroDivisionError("division by zero"), None])

    def app(message: Message, context: Any) -> Message:
        problem = next(answers)
        if problem is not None:
            raise problem
        return Message(RecordDict(), reply_to=message)

    monkeypatch.setattr(runner, "_client_app", lambda run, fab: app)
    failed = runner.run("token-1")
    assert failed.status == "failed" and "division by zero" in failed.details
    error = runtime["replies"][0]
    assert error.has_error() and "ZeroDivisionError" in error.error.reason
    assert error.error.code == 2  # Flower's CLIENT_APP_RAISED_EXCEPTION
    ok = runner.run("token-2")  # the same process serves the next task
    assert ok.status == "completed" and not runtime["replies"][1].has_error()
    assert runtime["outputs"] == [(failed.status, failed.details), ("completed", "")]


def test_serve_acquires_until_stopped_and_survives_a_missing_supernode(monkeypatch):
    tokens = iter([ConnectionError("not up yet"), None, "t1", "t2", None])
    ran: list[str] = []

    def acquire(client):
        token = next(tokens)
        if isinstance(token, Exception):
            raise token
        return token

    monkeypatch.setattr(worker, "runtime_client", lambda *a: _FakeClient())
    monkeypatch.setattr(worker, "acquire_task", acquire)
    monkeypatch.setattr(worker.time, "sleep", lambda s: None)
    monkeypatch.setattr(worker.TaskRunner, "run",
                        lambda self, token: ran.append(token) or worker.TaskOutcome("completed"))
    polls = iter(range(5))
    worker.serve("127.0.0.1:1", should_stop=lambda: next(polls, 5) >= 5)
    assert ran == ["t1", "t2"]


def test_site_data_is_read_once_per_worker(monkeypatch):
    from client import site as site_module
    from common.config import RunConfig

    reads: list[dict] = []

    def load(node_config, cfg):
        reads.append(node_config)
        return site_module.Site("a", SimpleNamespace(n=3), SimpleNamespace(n=1))

    monkeypatch.setattr(site_module, "load_site", load)
    cfg = RunConfig()
    node = {"data-dir": "/data/a"}
    try:
        site_cache.load_site(node, cfg)
        site_cache.load_site(node, cfg)
        assert len(reads) == 2  # a fresh ClientApp process: no cache
        site_cache.enable()
        first = site_cache.load_site(node, cfg)
        again = site_cache.load_site(node, cfg)
        assert len(reads) == 3 and again.train is first.train and again is not first
        site_cache.load_site({"data-dir": "/data/b"}, cfg)  # another site: read
        site_cache.load_site(node, RunConfig(seed=cfg.seed + 1))  # another run config: read
        assert len(reads) == 5 and site_cache.cached_sites() == site_cache.MAX_SITES
    finally:
        site_cache.enable(False)
    assert site_cache.cached_sites() == 0


def test_launcher_runs_process_isolation_with_the_worker_or_flowers_subprocess(monkeypatch):
    cfg = SimpleNamespace(coordinator="c:9092", root_certificates=Path("ca.pem"),
                          private_key=Path("k"), port=9555, max_retries=0, max_wait_time=0)
    node = Path("node-config.toml")
    worker_mode = launcher.supernode_command(cfg, node, "worker")
    assert worker_mode[worker_mode.index("--isolation") + 1] == "process"
    subprocess_mode = launcher.supernode_command(cfg, node, "subprocess")
    assert subprocess_mode[subprocess_mode.index("--isolation") + 1] == "subprocess"
    # TLS and node authentication are the SuperNode's either way.
    for cmd in (worker_mode, subprocess_mode):
        assert cmd[cmd.index("--root-certificates") + 1] == "ca.pem"
        assert cmd[cmd.index("--auth-supernode-private-key") + 1] == "k"
    cmd = worker_process.worker_command(cfg, 123)
    assert cmd[-4:] == ["--runtime-api-address", "127.0.0.1:9555", "--parent-pid", "123"]
    monkeypatch.delenv(launcher.CLIENTAPP_ENV, raising=False)
    assert launcher.clientapp_mode() == "worker"
    monkeypatch.setenv(launcher.CLIENTAPP_ENV, "Subprocess")
    assert launcher.clientapp_mode() == "subprocess"
    monkeypatch.setenv(launcher.CLIENTAPP_ENV, "threads")
    with pytest.raises(ValueError, match="CANCER_ALPHA_CLIENTAPP"):
        launcher.clientapp_mode()


def test_a_worker_that_dies_is_started_again_while_the_supernode_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(worker_process, "RESTART_DELAY", 0.05)
    monkeypatch.setattr(worker_process, "worker_command", lambda cfg, pid: [
        sys.executable, "-c", "print('worker up'); raise SystemExit(3)"])
    lines: list[bytes] = []
    alive = [True]
    cfg: Any = SimpleNamespace(state_dir=tmp_path)
    site_worker = worker_process.SiteWorker(cfg, {}, lines.append, alive=lambda: alive[0])
    site_worker.start()
    deadline = time.monotonic() + 20
    while site_worker.starts < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    alive[0] = False  # the SuperNode stopped: no more restarts
    site_worker.stop()
    assert site_worker.starts >= 3
    text = b"".join(lines).decode()
    assert "worker up" in text and "site worker exited with code 3" in text
    starts = site_worker.starts
    time.sleep(0.3)
    assert site_worker.starts == starts
