"""Weights travel as one packed array and come back exactly as they were."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from common.packed_arrays import LAYOUT, pack, packed_message, packed_transport, unpack
from common.protocol import ARRAYS, CONFIG

pytestmark = pytest.mark.usefixtures("task_identity")


def _weights() -> ArrayRecord:
    rng = np.random.default_rng(0)
    return ArrayRecord({
        "embed.weight": Array(rng.normal(size=(7, 3)).astype(np.float32)),
        "index": Array(np.arange(5, dtype=np.int64)),
        "scalar": Array(np.array(2.5, dtype=np.float64)),
        "empty": Array(np.zeros((0, 4), dtype=np.float32)),
        "mask": Array(np.array([True, False, True])),
    })


def test_a_packed_record_unpacks_to_the_same_names_order_dtypes_and_bytes():
    content = RecordDict({ARRAYS: _weights(), CONFIG: ConfigRecord({"k": 1})})
    packed = pack(content)
    assert list(packed[ARRAYS].keys()) == ["packed"] and LAYOUT in packed
    assert ARRAYS in content and LAYOUT not in content  # the original is untouched
    unpack(packed)
    assert LAYOUT not in packed and packed[CONFIG]["k"] == 1
    before, after = _weights(), packed[ARRAYS]
    assert list(after.keys()) == list(before.keys())
    for name in before:
        a, b = before[name].numpy(), after[name].numpy()
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def test_nothing_to_pack_is_left_as_it_is():
    single = RecordDict({ARRAYS: ArrayRecord({"w": Array(np.ones(3, dtype=np.float32))})})
    assert pack(single) is single
    plain = RecordDict({CONFIG: ConfigRecord({"k": 1})})
    assert pack(plain) is plain
    unpack(plain)  # no layout: nothing to do
    msg = Message(content=plain, dst_node_id=3, message_type=MessageType.TRAIN)
    assert packed_message(msg) is msg


@pytest.mark.parametrize(("damage", "error"), [
    (lambda c: c[LAYOUT].__setitem__("layout", json.dumps([["w", "<f4", [1000]]])),
     "runs past the end"),
    (lambda c: c[LAYOUT].__setitem__("layout", json.dumps([["w", "<f4", [1]]])),
     "bytes beyond the layout"),
    (lambda c: c[LAYOUT].__setitem__("layout", "not json"), "readable layout"),
    (lambda c: c.__setitem__(ARRAYS, ArrayRecord({"packed": Array(np.ones(4))})),
     "one uint8 vector"),
    (lambda c: c[LAYOUT].__setitem__("layout", json.dumps([["w", "<f4"]])),
     "malformed layout entry"),
])
def test_a_malformed_packing_is_refused_naming_what_is_wrong(damage, error):
    content = pack(RecordDict({ARRAYS: _weights()}))
    damage(content)
    with pytest.raises(ValueError, match=error):
        unpack(content)


def test_the_site_mod_unpacks_what_it_receives_and_packs_its_reply():
    seen = {}

    def handler(msg: Message, context: Context) -> Message:
        seen["names"] = list(msg.content[ARRAYS].keys())
        return Message(content=RecordDict({ARRAYS: _weights()}), reply_to=msg)

    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    incoming = packed_message(Message(content=RecordDict({ARRAYS: _weights()}),
                                      dst_node_id=1, message_type=MessageType.TRAIN))
    reply = packed_transport(incoming, context, handler)
    assert seen["names"] == list(_weights().keys())
    assert LAYOUT in reply.content and list(reply.content[ARRAYS].keys()) == ["packed"]

    broken = packed_message(Message(content=RecordDict({ARRAYS: _weights()}),
                                    dst_node_id=1, message_type=MessageType.TRAIN))
    broken.content[LAYOUT]["layout"] = "[]"
    refused = packed_transport(broken, context, handler)
    assert refused.has_error() and "bytes beyond the layout" in refused.error.reason


def test_the_coordinator_drops_malformed_packed_weights_of_a_reply():
    from server.rounds.exchange import _unpacked

    request = Message(content=RecordDict(), dst_node_id=1, message_type=MessageType.TRAIN)
    content = pack(RecordDict({ARRAYS: _weights(), CONFIG: ConfigRecord({"k": 1})}))
    content[LAYOUT]["layout"] = json.dumps([["w", "<f4", [10 ** 9]]])
    reply = Message(content=content, reply_to=request)
    _unpacked(reply)
    assert ARRAYS not in reply.content and LAYOUT not in reply.content
    assert reply.content[CONFIG]["k"] == 1
