"""The site's long-lived ClientApp worker: one process that runs every task of its SuperNode.

Flower 1.41 runs a SuperNode's tasks through a SuperExec. In ``--isolation subprocess``
the SuperNode's own SuperExec starts a fresh ``flwr-clientapp`` process per message,
and that process serves exactly one task and exits (``run_clientapp`` ends in
``flwr_exit``): Python, Flower, torch and the site's data are paid for again on every
message. ``--isolation process`` only moves the SuperExec out of the SuperNode; the
stock one still starts one ``flwr-clientapp`` per task.

This worker takes the SuperExec's place in ``--isolation process``: it imports Flower,
torch and the ClientApp once, acquires the SuperNode's tasks over the Runtime API
(127.0.0.1, the same loopback API ``flwr-clientapp`` uses), and runs each task in this
process the way ``flwr-clientapp`` would: pull the message and context, call the
ClientApp, push the reply and the updated context. The site's data stays loaded between
tasks (:mod:`client.site_cache`). TLS to the coordinator and node authentication stay
in the SuperNode, unchanged. An exception raised by the ClientApp becomes an error reply
and the worker carries on: it never takes the SuperNode down.

    python -m client.worker --runtime-api-address 127.0.0.1:9094 --parent-pid PID
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from client.worker_profile import TaskProfiler
from common.phase_clock import PhaseClock

logger = logging.getLogger(__name__)

# Between task polls when idle: one loopback HTTP call; Flower's own SuperExec waits 1 s.
DEFAULT_POLL_INTERVAL = 0.1
# Torch's intra-op threads per worker unless OMP_NUM_THREADS says otherwise.
DEFAULT_TORCH_THREADS = 1
# What the site log says when a task starts and ends (read by the deployment benchmark).
TASK_STARTED = "ClientApp task started in the site worker"
TASK_FINISHED = "ClientApp task finished in the site worker"
TASK_PHASES = "task phases (s)"


@dataclass(frozen=True)
class TaskOutcome:
    """What one task came to: Flower's sub-status and, when it failed, why."""

    status: str
    details: str = ""


def warm_up(torch_threads: int | None = None) -> None:
    """Import what every task needs, once: Flower's runtime, torch and the ClientApp.

    ``torch_threads``: torch's intra-op threads (``None``: torch's default).
    """
    import torch

    import client.app
    import client.site  # noqa: F401
    from client import site_cache

    if torch_threads is not None:
        torch.set_num_threads(torch_threads)
    # The first optimizer imports torch._dynamo (seconds): pay it here, not in round 1.
    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    site_cache.enable()


def torch_threads_from_env() -> int | None:
    """Torch threads for the worker: ``OMP_NUM_THREADS`` when set, else one.

    A site's tasks are small tensors (one batch of one site's patients) for which extra
    intra-op threads cost more in hand-offs than they save, and the SuperNode beside the
    worker needs a core for the transfers; a host that runs several sites would
    otherwise run sites x cores threads.
    """
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else DEFAULT_TORCH_THREADS


def runtime_client(address: str, token: str | None = None):
    """A Runtime API client to the SuperNode (plain HTTP on loopback, as Flower's own
    SuperExec and ``flwr-clientapp`` use in subprocess isolation)."""
    from flwr.supercore.interceptors import (
        RuntimeTokenHttpInterceptor,
        RuntimeVersionHttpInterceptor,
    )
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    component = "flwr-clientapp" if token else "SuperExec"
    interceptors = [RuntimeVersionHttpInterceptor(component_name=component)]
    if token:
        interceptors.append(RuntimeTokenHttpInterceptor(token))
    return RuntimeHttpClient.from_server_address(
        server_address=address, insecure=True, root_certificates=None,
        interceptors=interceptors, retry_invoker=make_simple_http_retry_invoker())


def acquire_task(client) -> str | None:
    """The token of the next ClientApp task the SuperNode holds, or None."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType

    res = client.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]))
    if res.HasField("task") and res.token:
        return res.token
    return None


class TaskRunner:
    """Runs ClientApp tasks in this process; installs each app bundle (FAB) once."""

    def __init__(self, address: str, profiler: TaskProfiler | None = None) -> None:
        self.address = address
        self.profiler = profiler or TaskProfiler(None)
        self._installed: set[str] = set()

    def run(self, token: str) -> TaskOutcome:
        """One task, as ``flwr-clientapp`` runs it, without leaving the process."""
        from flwr.app import Error, Message
        from flwr.common.constant import ErrorCode, SubStatus
        from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
        from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

        from client.worker_transfer import pull_task_input

        client = runtime_client(self.address, token)
        heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
        heartbeat.start()
        clock = PhaseClock()
        message = context = reply = None
        outcome = TaskOutcome(SubStatus.FAILED, "ClientApp task failed for an unknown reason")
        try:
            message, context, run, fab = pull_task_input(client)
            clock.lap("pull")
            app = self._client_app(run, fab)
            clock.lap("load app")
            with self.profiler.task():
                reply = app(message=message, context=context)
            clock.lap("clientapp")
            outcome = TaskOutcome(SubStatus.COMPLETED)
        except Exception as exc:  # an error reply, never a dead worker
            logger.exception("the ClientApp raised an exception")
            # The reason in Flower's own format: "<class 'X'>:<'message'>".
            reason = f"{type(exc)}:<'{exc}'>"
            outcome = TaskOutcome(SubStatus.FAILED, reason)
            if message is not None:
                reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                                      reason=reason), reply_to=message)
        finally:
            try:
                if reply is not None and context is not None:
                    push_message(client, reply, context)
                    clock.lap("push reply")
            except Exception:
                logger.exception("could not push the reply to the SuperNode")
                outcome = TaskOutcome(SubStatus.FAILED, "could not push the reply")
            push_task_output(client, context, outcome.status, outcome.details)
            clock.lap("push output")
            heartbeat.stop()
            client.close()
        logger.info("%s: %s", TASK_PHASES, clock)
        return outcome

    def _client_app(self, run, fab) -> Callable:
        from flwr.cli.install import install_from_fab
        from flwr.clientapp.utils import get_load_client_app_fn

        if fab.hash_str not in self._installed:
            install_from_fab(fab.content, skip_prompt=True)
            self._installed.add(fab.hash_str)
        load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
        # Flower's loader reuses a module already imported: the ClientApp is built once.
        return load(run.fab_id, run.fab_version, fab.hash_str)


def serve(address: str, *, poll_interval: float = DEFAULT_POLL_INTERVAL,
          should_stop: Callable[[], bool] = lambda: False) -> None:
    """Acquire and run the SuperNode's ClientApp tasks, one at a time, until stopped."""
    runner = TaskRunner(address, TaskProfiler.from_env())
    client = runtime_client(address)
    try:
        while not should_stop():
            try:
                token = acquire_task(client)
            except Exception as exc:  # the SuperNode is (re)starting
                logger.debug("Runtime API not reachable yet: %s", exc)
                time.sleep(1.0)
                continue
            if token is None:
                time.sleep(poll_interval)
                continue
            started = time.perf_counter()
            logger.info(TASK_STARTED)
            outcome = runner.run(token)
            logger.info("%s: %s in %.2f s%s", TASK_FINISHED, outcome.status,
                        time.perf_counter() - started,
                        f" ({outcome.details})" if outcome.details else "")
    finally:
        client.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runtime-api-address", required=True,
                   help="The SuperNode's Runtime API, host:port (loopback).")
    p.add_argument("--parent-pid", type=int, default=None,
                   help="Stop when this process (the site launcher) is gone.")
    p.add_argument("--poll-interval", type=float, default=DEFAULT_POLL_INTERVAL)
    p.add_argument("--torch-threads", type=int, default=None,
                   help="Torch's intra-op threads (default: OMP_NUM_THREADS, else "
                        f"{DEFAULT_TORCH_THREADS}).")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    for noisy in ("flwr", "httpx"):  # a line per step and per poll of every task
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.parent_pid is not None:
        from flwr.supercore.app_utils import start_parent_process_monitor

        start_parent_process_monitor(args.parent_pid)  # SIGINT here once it is gone
    started = time.perf_counter()
    # The launcher stops the worker with SIGINT, possibly while it is still warming up
    # (a SuperNode refused at once): a stop, not a failure, so no traceback in the log.
    try:
        warm_up(args.torch_threads or torch_threads_from_env())
        import torch

        logger.info("site worker ready in %.1f s (Flower, torch and the ClientApp "
                    "imported; torch uses %d thread(s))", time.perf_counter() - started,
                    torch.get_num_threads())
        serve(args.runtime_api_address, poll_interval=args.poll_interval)
    except KeyboardInterrupt:
        logger.info("site worker stopped")


if __name__ == "__main__":
    main()
