"""Flower 1.41's fixed waits, shortened where a round would otherwise sit in them.

A message's content (the weights) travels as separate objects after the message itself.
Whoever pulls a message that has arrived but whose objects have not all been pushed yet
(a ServerApp collecting a reply while the site still uploads it; a SuperNode taking a
message while the ServerApp still pushes it) gets "not available yet" and Flower waits
1 s, then 2, 4 ... up to 10 s before asking again. :func:`quick_object_pulls` makes
such a retry come after 50 ms, growing to 0.5 s: a few hundred cheap requests in the
worst case, against seconds of waiting per round.

The SuperNode's own loop waits a fixed 3 s between asking the coordinator for work and
0.5 s between looks for the ClientApp's reply and its objects: :class:`SuperNodePacing`
stands in for the ``time`` module of that loop to shorten both (see
:mod:`client.worker_supernode`). Both are tied to Flower 1.41's code (pinned in
pyproject.toml); :func:`check_flower_waits` fails loudly when that code changes.
"""

from __future__ import annotations

import functools
import inspect
import time
from types import ModuleType
from typing import Any

PULL_INITIAL_BACKOFF = 0.05
PULL_BACKOFF_CAP = 0.5
# Flower's SuperNode loop: idle wait for work and the wait for a reply (seconds).
FLOWER_IDLE_WAIT = 3
FLOWER_REPLY_WAIT = 0.5
# The first look for work after a message waits this long; each empty look waits
# IDLE_GROWTH times longer, up to Flower's own 3 s once the coordinator is quiet.
IDLE_FIRST_WAIT = 0.1
IDLE_GROWTH = 1.5
REPLY_WAIT = 0.05


def quick_object_pulls(module: ModuleType) -> None:
    """Make ``module``'s ``pull_objects`` retry a missing object after 50 ms (capped at
    0.5 s) instead of 1 s (capped at 10 s). Idempotent."""
    pull = module.pull_objects
    if getattr(pull, "quick", False):
        return
    quick = functools.partial(pull, initial_backoff=PULL_INITIAL_BACKOFF,
                              backoff_cap=PULL_BACKOFF_CAP)
    quick.quick = True  # type: ignore[attr-defined]
    module.pull_objects = quick


def quick_reply_pulls() -> None:
    """The deployed ServerApp's grid: collect a reply's objects without Flower's 1 s
    back-off (the site may still be uploading them when the reply is listed)."""
    from flwr.superlink.grid import http_grid

    quick_object_pulls(http_grid)


class SuperNodePacing:
    """The ``time`` module for Flower's SuperNode loop, with shorter waits.

    Its idle wait (3 s) starts at :data:`IDLE_FIRST_WAIT` after each message and grows
    back to 3 s while no work comes; its reply and object waits (0.5 s) become
    :data:`REPLY_WAIT`. Everything else is the real ``time``.
    """

    def __init__(self) -> None:
        self.idle_wait = IDLE_FIRST_WAIT

    def message_taken(self) -> None:
        """Work came: look for the next soon."""
        self.idle_wait = IDLE_FIRST_WAIT

    def sleep(self, seconds: float) -> None:
        if seconds == FLOWER_IDLE_WAIT:
            time.sleep(self.idle_wait)
            self.idle_wait = min(self.idle_wait * IDLE_GROWTH, FLOWER_IDLE_WAIT)
        elif seconds == FLOWER_REPLY_WAIT:
            time.sleep(REPLY_WAIT)
        else:
            time.sleep(seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def pace_supernode(loop: ModuleType) -> SuperNodePacing:
    """Shorten the waits of Flower's SuperNode loop (``start_client_internal``)."""
    check_flower_waits(loop)
    pacing = SuperNodePacing()
    pull_and_store = loop._pull_and_store_message

    @functools.wraps(pull_and_store)
    def pulled(*args: Any, **kwargs: Any) -> int | None:
        run_id = pull_and_store(*args, **kwargs)
        if run_id is not None:
            pacing.message_taken()
        return run_id

    loop._pull_and_store_message = pulled
    loop.time = pacing
    quick_object_pulls(loop)
    return pacing


def check_flower_waits(loop: ModuleType) -> None:
    """Raise if Flower's SuperNode loop no longer waits where :class:`SuperNodePacing`
    expects it to (a Flower upgrade changed the loop)."""
    source = inspect.getsource(loop)
    expected = {f"time.sleep({FLOWER_IDLE_WAIT})": 1, f"time.sleep({FLOWER_REPLY_WAIT})": 2}
    found = {call: source.count(call) for call in expected}
    if found != expected or not hasattr(loop, "_pull_and_store_message") \
            or not hasattr(loop, "pull_objects"):
        raise RuntimeError(f"Flower's SuperNode loop changed (waits {found}, expected "
                           f"{expected}): update common.flower_pacing")
