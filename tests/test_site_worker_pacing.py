"""What keeps a deployed round short around the site worker: Flower's fixed waits
shortened (SuperNode loop, object pulls), the worker's per-task phase timings and
profiles, its torch threads, and the task input pulled without Flower's 1 s back-off."""

from __future__ import annotations

import pstats
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest

from client import launcher, worker, worker_profile, worker_transfer
from common import flower_pacing, phase_clock


def test_supernode_waits_are_short_after_a_message_and_grow_back_to_flowers(monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr(flower_pacing.time, "sleep", slept.append)
    pacing = flower_pacing.SuperNodePacing()
    for _ in range(12):
        pacing.sleep(flower_pacing.FLOWER_IDLE_WAIT)
    assert slept[0] == flower_pacing.IDLE_FIRST_WAIT
    assert slept == sorted(slept) and slept[-1] == flower_pacing.FLOWER_IDLE_WAIT
    pacing.message_taken()
    pacing.sleep(flower_pacing.FLOWER_IDLE_WAIT)
    pacing.sleep(flower_pacing.FLOWER_REPLY_WAIT)
    pacing.sleep(2.0)  # any other wait is left alone
    assert slept[-3:] == [flower_pacing.IDLE_FIRST_WAIT, flower_pacing.REPLY_WAIT, 2.0]
    assert pacing.monotonic() > 0  # the rest of `time` is the real one


def test_pacing_flowers_supernode_loop_patches_its_waits_and_object_pulls(monkeypatch):
    from flwr.supernode import start_client_internal as loop

    for name in ("time", "pull_objects", "_pull_and_store_message"):
        monkeypatch.setattr(loop, name, getattr(loop, name))  # restored after the test
    pulled = iter([None, 7])
    monkeypatch.setattr(loop, "_pull_and_store_message", lambda **kw: next(pulled))
    pacing = flower_pacing.pace_supernode(loop)
    assert loop.time is pacing
    assert loop.pull_objects.keywords == {
        "initial_backoff": flower_pacing.PULL_INITIAL_BACKOFF,
        "backoff_cap": flower_pacing.PULL_BACKOFF_CAP}
    pacing.idle_wait = 2.0
    assert loop._pull_and_store_message() is None and pacing.idle_wait == 2.0
    assert loop._pull_and_store_message() == 7  # a message: look again soon
    assert pacing.idle_wait == flower_pacing.IDLE_FIRST_WAIT


def test_a_changed_flower_loop_is_refused(tmp_path, monkeypatch):
    (tmp_path / "changed_loop.py").write_text(
        "import time\ndef pull_objects(): pass\ndef _pull_and_store_message(): pass\n"
        "def loop():\n    time.sleep(5)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import changed_loop

    with pytest.raises(RuntimeError, match="SuperNode loop changed"):
        flower_pacing.pace_supernode(changed_loop)
    monkeypatch.delitem(sys.modules, "changed_loop")


def test_quick_object_pulls_pass_the_short_backoff_once():
    calls: list[dict] = []
    module = types.ModuleType("grid")
    module.pull_objects = lambda ids, fn, **kw: calls.append(kw)
    flower_pacing.quick_object_pulls(module)
    flower_pacing.quick_object_pulls(module)  # idempotent: not wrapped twice
    module.pull_objects(["a"], None)
    assert calls == [{"initial_backoff": 0.05, "backoff_cap": 0.5}]


def test_task_input_is_pulled_with_the_short_backoff(monkeypatch, task_identity):
    from flwr.app import Context, RecordDict
    from flwr.common.serde import context_to_proto
    from flwr.proto.message_pb2 import ObjectTree
    from flwr.proto.run_pb2 import Run
    from flwr.supercore.inflatable import inflatable_utils

    seen: dict = {}
    message = SimpleNamespace(metadata=SimpleNamespace(__dict__={}))

    def pull_and_inflate(tree, pull, confirm, **kw):
        seen.update(kw, tree=tree)
        return message

    monkeypatch.setattr(inflatable_utils, "pull_and_inflate_object_from_tree", pull_and_inflate)
    context = Context(run_id=3, node_id=5, node_config={}, state=RecordDict(), run_config={})
    tree = ObjectTree(object_id="abc")
    client = SimpleNamespace(
        PullTaskInput=lambda req: SimpleNamespace(task_id=1, run=Run(run_id=3),
                                                  context=context_to_proto(context),
                                                  fab=SimpleNamespace(hash_str="h",
                                                                      content=b"",
                                                                      verifications={})),
        PullMessages=lambda req: SimpleNamespace(messages_list=[object()],
                                                 message_object_trees=[tree]),
        PullObject=None, ConfirmMessageReceived=None)
    monkeypatch.setattr("flwr.common.serde.fab_from_proto", lambda fab: fab)
    got, ctx, run, fab = worker_transfer.pull_task_input(client)
    assert got is message and message.metadata.__dict__["_message_id"] == "abc"
    assert seen["initial_backoff"] == worker_transfer.PULL_INITIAL_BACKOFF < 1
    assert seen["backoff_cap"] == worker_transfer.PULL_BACKOFF_CAP < 10
    assert ctx.node_id == 5 and run.run_id == 3 and fab.hash_str == "h"


def test_phases_are_logged_and_read_back():
    clock = phase_clock.PhaseClock()
    clock.lap("pull")
    clock.lap("clientapp")
    clock.lap("pull")  # a phase met twice adds up
    phases = phase_clock.parse_phases(str(clock))
    assert list(phases) == ["pull", "clientapp"]
    assert phases["pull"] == pytest.approx(clock.phases["pull"], abs=1e-3)
    assert phase_clock.parse_phases("push reply 0.250, load app 0.001") == {
        "push reply": 0.25, "load app": 0.001}


def test_a_profile_per_task_when_asked(tmp_path, monkeypatch):
    off = worker_profile.TaskProfiler(None)
    with off.task():
        sum(range(10))
    assert off.tasks == 0
    monkeypatch.setenv(worker_profile.PROFILE_ENV, str(tmp_path / "prof"))
    profiler = worker_profile.TaskProfiler.from_env()
    for _ in range(2):
        with profiler.task():
            sorted(range(1000), key=lambda x: -x)
    files = sorted((tmp_path / "prof").glob("worker-*-task-*.prof"))
    assert [f.name.rsplit("-", 1)[1] for f in files] == ["0001.prof", "0002.prof"]
    stats = pstats.Stats(str(files[0]))
    assert any(name == "<lambda>" for _, _, name in stats.stats)  # type: ignore[attr-defined]


def test_worker_torch_threads_and_paced_supernode(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert worker.torch_threads_from_env() == worker.DEFAULT_TORCH_THREADS == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert worker.torch_threads_from_env() == 3
    cfg = SimpleNamespace(coordinator="c:9092", root_certificates=Path("ca.pem"),
                          private_key=Path("k"), port=9555, max_retries=0, max_wait_time=0)
    paced = launcher.supernode_command(cfg, Path("n.toml"), "worker")
    assert paced[1:3] == ["-m", "client.worker_supernode"]
    stock = launcher.supernode_command(cfg, Path("n.toml"), "subprocess")
    assert Path(stock[0]).name == "flower-supernode"
