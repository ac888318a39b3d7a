"""A Flower Grid that calls the ClientApp in this process, one site after another.

For benchmarks that run many short federations: Flower's simulation engine starts Ray
and a worker per CPU for every run (about half a minute on two cores before round 1),
while here the sites' data stay loaded between runs. The messages, the ClientApp
(handlers and mods) and the ServerApp's round loop are the product's; only transport
and scheduling differ (no parallel sites, no heartbeats).
"""

from __future__ import annotations

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

# Flower's code for an exception raised by a ClientApp (flwr.common.constant.ErrorCode).
CLIENT_APP_RAISED_EXCEPTION = 2
FIRST_NODE_ID = 100  # sites' node ids: 100, 101, ... (never the SuperLink's)


class InProcessGrid:
    """Sites ``partition-id`` 0..n-1 as node ids 100, 101, ...; a reply is ready once pushed."""

    def __init__(self, client_app: ClientApp, n_sites: int, run_config: dict,
                 run_id: int = 1) -> None:
        self.client_app = client_app
        # Flower stamps every new Message with the process's task identity, which its
        # own processes set when they start: this one is the run's only process.
        TaskIdentity.run_id, TaskIdentity.task_id = run_id, 1
        TaskIdentity.node_id = SUPERLINK_NODE_ID
        self.contexts = {
            FIRST_NODE_ID + i: Context(run_id=run_id, node_id=FIRST_NODE_ID + i,
                           node_config={"partition-id": i, "num-partitions": n_sites},
                           state=RecordDict(), run_config=dict(run_config))
            for i in range(n_sites)}
        self.replies: dict[str, Message] = {}
        self._ids = 0

    def get_node_ids(self) -> list[int]:
        return sorted(self.contexts)

    def push_messages(self, messages) -> list[str]:
        ids = []
        for msg in messages:
            self._ids += 1
            mid = f"m{self._ids}"
            msg.metadata.__dict__["_message_id"] = mid  # as Flower's grids do
            ids.append(mid)
            context = self.contexts[msg.metadata.dst_node_id]
            try:
                reply = self.client_app(msg, context)
            except Exception as exc:  # Flower reports a ClientApp's exception as an error
                reply = Message(Error(code=CLIENT_APP_RAISED_EXCEPTION,
                                      reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)
            self.replies[mid] = reply
        return ids

    def pull_messages(self, ids) -> list[Message]:
        return [self.replies.pop(i) for i in list(ids) if i in self.replies]
