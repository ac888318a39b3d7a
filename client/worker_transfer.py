"""Taking a task's message from the SuperNode without Flower's one-second back-off.

The SuperNode creates a task as soon as a message arrives, before it has pulled the
message's objects (the weights) from the coordinator. ``flwr-clientapp`` then pulls those
objects from the SuperNode and, for every one not there yet, waits 1, 2, 4 ... s (at most
10 s) before asking again: a worker that takes its task at once would mostly wait on
that back-off rather than on the download. :func:`pull_task_input` is Flower's own, with
a back-off that starts at :data:`PULL_INITIAL_BACKOFF` and stops growing at
:data:`PULL_BACKOFF_CAP` (one loopback HTTP call per object and retry).
"""

from __future__ import annotations

from typing import Any

# Retry a missing object after 50 ms, then 100, 200, 400, 500 ms ...: the download it
# waits for takes a few hundred milliseconds on loopback.
PULL_INITIAL_BACKOFF = 0.05
PULL_BACKOFF_CAP = 0.5


def pull_task_input(client: Any) -> tuple[Any, Any, Any, Any]:
    """``(message, context, run, fab)`` of the acquired task, as Flower's
    ``pull_task_input`` returns them."""
    from flwr.app import Message
    from flwr.common.serde import context_from_proto, fab_from_proto, run_from_proto
    from flwr.proto.node_pb2 import Node
    from flwr.proto.runtime_pb2 import PullAppMessagesRequest, PullTaskInputRequest
    from flwr.supercore.inflatable.inflatable_protobuf_utils import (
        make_confirm_message_received_fn_protobuf,
        make_pull_object_fn_protobuf,
    )
    from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
    from flwr.supercore.task_identity import TaskIdentity

    res = client.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id = res.task_id
    TaskIdentity.run_id = res.run.run_id
    TaskIdentity.node_id = res.context.node_id
    context = context_from_proto(res.context)
    run = run_from_proto(res.run)
    fab = fab_from_proto(res.fab)

    pulled = client.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise RuntimeError("No messages received from Runtime API")
    node = Node(node_id=context.node_id)
    tree = pulled.message_object_trees[0]
    message = pull_and_inflate_object_from_tree(
        tree,
        make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(client.ConfirmMessageReceived, node,
                                                  context.run_id),
        return_type=Message,
        initial_backoff=PULL_INITIAL_BACKOFF,
        backoff_cap=PULL_BACKOFF_CAP,
    )
    # The deflated message does not hold its own id (its object id).
    message.metadata.__dict__["_message_id"] = tree.object_id
    return message, context, run, fab
