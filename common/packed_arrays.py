"""Model weights as one byte array on the wire instead of one Flower object per tensor.

Flower stores every array of a message as its own object, and a deployed SuperLink
moves each object in its own request (with its own database work): a model of ~50
tensors costs ~50 round trips each way per site and round, which dominated a deployed
round. Before a message leaves, :func:`pack` replaces its weights record with one
``uint8`` array of the tensors' bytes back to back, and a small layout record (name,
dtype, shape of each, in order); :func:`unpack` restores the record exactly, bytes and
order included. The coordinator packs what it sends and unpacks what it receives
(:mod:`server.rounds.exchange`); every site does the same in a ClientApp mod
(:func:`packed_transport`), so the rest of the code never sees a packed record.
"""

from __future__ import annotations

import json

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp.typing import ClientAppCallable

from common.protocol import ARRAYS

LAYOUT = "packed-layout"  # record holding the layout of a packed weights record
_PACKED = "packed"  # the one array of a packed record
_LAYOUT_KEY = "layout"
# Flower's code for an error raised by a ClientApp (flwr.common.constant.ErrorCode).
_CLIENT_APP_RAISED_EXCEPTION = 2


def pack(content: RecordDict) -> RecordDict:
    """``content`` with its weights record packed (a copy; ``content`` is unchanged), or
    ``content`` itself when there is nothing to gain (no weights, or a single array)."""
    record = content.get(ARRAYS)
    if not isinstance(record, ArrayRecord) or len(record) < 2 or LAYOUT in content:
        return content
    # copy(order="C"), not ascontiguousarray: that would turn a 0-d array into 1-d
    arrays = [(name, a.numpy().copy(order="C")) for name, a in record.items()]
    layout = [[name, a.dtype.str, list(a.shape)] for name, a in arrays]
    blob = np.concatenate([a.reshape(-1).view(np.uint8) for _, a in arrays])
    out = RecordDict({key: value for key, value in content.items() if key != ARRAYS})
    out[ARRAYS] = ArrayRecord({_PACKED: Array(blob)})
    out[LAYOUT] = ConfigRecord({_LAYOUT_KEY: json.dumps(layout)})
    return out


def unpack(content: RecordDict) -> None:
    """Restore a packed weights record in place (nothing to do when none is packed).
    Raises ``ValueError`` naming what is wrong with a malformed one."""
    if LAYOUT not in content:
        return
    try:
        layout = json.loads(str(content[LAYOUT][_LAYOUT_KEY]))
        blob = content[ARRAYS][_PACKED].numpy()
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"packed weights without a readable layout or array ({exc})") \
            from exc
    if blob.dtype != np.uint8 or blob.ndim != 1:
        raise ValueError(f"packed weights must be one uint8 vector, got {blob.dtype} "
                         f"{blob.shape}")
    arrays, offset = {}, 0
    for entry in layout:
        try:
            name, dtype, shape = entry
            kind = np.dtype(dtype)
            size = int(np.prod(shape, dtype=np.int64)) * kind.itemsize
        except (TypeError, ValueError) as exc:
            raise ValueError(f"packed weights: malformed layout entry {entry!r} ({exc})") \
                from exc
        if size < 0 or offset + size > blob.size:
            raise ValueError(f"packed weights: {name!r} runs past the end of the data")
        arrays[str(name)] = Array(blob[offset:offset + size].view(kind).reshape(shape).copy())
        offset += size
    if offset != blob.size:
        raise ValueError(f"packed weights: {blob.size - offset} bytes beyond the layout")
    content[ARRAYS] = ArrayRecord(arrays)
    del content[LAYOUT]


def packed_message(msg: Message) -> Message:
    """``msg`` with its weights packed: a new message to the same node, or ``msg``."""
    content = pack(msg.content)
    if content is msg.content:
        return msg
    meta = msg.metadata
    return Message(content=content, dst_node_id=meta.dst_node_id,
                   message_type=meta.message_type, ttl=meta.ttl, group_id=meta.group_id)


def packed_transport(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """ClientApp mod: unpack the weights received, pack the weights of the reply."""
    try:
        unpack(msg.content)
    except ValueError as exc:
        # Replied, not raised: an exception would stop a deployed SuperNode.
        return Message(Error(code=_CLIENT_APP_RAISED_EXCEPTION, reason=str(exc)),
                       reply_to=msg)
    reply = call_next(msg, context)
    if not reply.has_error():
        reply.content = pack(reply.content)
    return reply
