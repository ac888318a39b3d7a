"""Sending messages to sites and collecting their replies, despite sites that vanish."""

from __future__ import annotations

import logging
import time

from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from common.flower_pacing import quick_reply_pulls
from common.packed_arrays import LAYOUT, packed_message, unpack
from common.protocol import ARRAYS
from server.rounds.outcome import FederationError

logger = logging.getLogger(__name__)


def wait_for_sites(grid: Grid, minimum: int, timeout: float) -> list[int]:
    """Node ids once at least ``minimum`` sites are connected."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = list(grid.get_node_ids())
        if len(nodes) >= minimum:
            return nodes
        if time.monotonic() > deadline:
            raise FederationError(f"only {len(nodes)} of the required {minimum} sites connected "
                                  f"within {timeout:.0f} s")
        time.sleep(0.5)


def exchange(grid: Grid, messages: list[Message], timeout: float
             ) -> tuple[list[Message], list[int]]:
    """Send ``messages`` and collect the replies: ``(replies, nodes lost)``.

    Like ``Grid.send_and_receive``, but a site whose node goes offline while its message
    is out (Flower: missed heartbeats) is given up at once, even if it reconnects later:
    a restarted SuperNode never answers a message its previous process had taken, so
    waiting for it would hold the round until ``timeout``. Polls quickly at first (the
    simulation answers in milliseconds) and every 0.25 s at most (deployment). Weights
    travel packed as one array (:mod:`common.packed_arrays`); the replies come back
    unpacked, and a reply whose packing is malformed loses its weights (the update
    guard then rejects it) rather than ending the round.
    """
    if not messages:
        return [], []
    quick_reply_pulls()
    messages = [packed_message(m) for m in messages]
    ids = list(grid.push_messages(messages))
    if len(ids) == len(messages):
        destination = {mid: msg.metadata.dst_node_id
                       for mid, msg in zip(ids, messages, strict=True)}
    else:  # some could not be stored: keep those that were (the grid set their ids)
        destination = {m.metadata.message_id: m.metadata.dst_node_id for m in messages
                       if m.metadata.message_id in set(ids)}
    pending, replies, lost = set(destination), [], []
    deadline = time.monotonic() + timeout
    poll = 0.02
    while pending:
        for reply in grid.pull_messages(pending):
            _unpacked(reply)
            replies.append(reply)
            pending.discard(reply.metadata.reply_to_message_id)
        if not pending:
            break
        online = set(grid.get_node_ids())
        for mid in [m for m in pending if destination[m] not in online]:
            lost.append(destination[mid])
            pending.discard(mid)
            logger.warning("node %s went offline with its message out; going on without it",
                           destination[mid])
        if pending and time.monotonic() > deadline:
            lost += [destination[m] for m in pending]
            logger.warning("no reply from node(s) %s within %g s; going on without them",
                           sorted(destination[m] for m in pending), timeout)
            break
        time.sleep(poll)
        poll = min(poll * 1.5, 0.25)
    return replies, lost


def _unpacked(reply: Message) -> None:
    """Unpack ``reply``'s weights in place; drop them when their packing is malformed."""
    if reply.has_error():
        return
    try:
        unpack(reply.content)
    except ValueError as exc:
        logger.warning("node %s sent malformed packed weights (%s); they are dropped",
                       reply.metadata.src_node_id, exc)
        for key in (ARRAYS, LAYOUT):
            if key in reply.content:
                del reply.content[key]


def query(grid: Grid, nodes: list[int], content: RecordDict, timeout: float
          ) -> tuple[list[Message], list[int]]:
    """Send the same query ``content`` to every node of ``nodes``: see :func:`exchange`."""
    messages = [Message(content=content.copy(), message_type=MessageType.QUERY, dst_node_id=n)
                for n in nodes]
    return exchange(grid, messages, timeout)


def resent(messages: list[Message]) -> list[Message]:
    """Fresh copies of ``messages`` (same content and destination) to push again."""
    return [Message(content=m.content, message_type=m.metadata.message_type,
                    dst_node_id=m.metadata.dst_node_id) for m in messages]
