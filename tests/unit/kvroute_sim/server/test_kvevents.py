"""KV events in vLLM's msgpack wire shape, over a real ZMQ PUB/SUB pair on loopback."""

from __future__ import annotations

import time

import msgpack
import zmq

from kvroute_sim.kvcache import AllBlocksCleared, BlockRemoved, BlockStored, KVEvent
from kvroute_sim.server.kvevents import KVEventPublisher, decode_batch, encode_batch

EVENTS: list[KVEvent] = [
    BlockStored((11, 12), None, tuple(range(32)), 16, None),
    BlockStored((13,), 12, tuple(range(16)), 16, 2),
    BlockRemoved((11,)),
    AllBlocksCleared(),
]


def test_batch_encodes_as_vllm_array_like_tagged_structs() -> None:
    ts, events = decode_batch(encode_batch(12.5, EVENTS))
    assert ts == 12.5
    assert events[0] == ["BlockStored", [11, 12], None, list(range(32)), 16, None, "GPU"]
    assert events[1][2] == 12
    assert events[1][5] == 2
    assert events[2] == ["BlockRemoved", [11], "GPU"]
    assert events[3] == ["AllBlocksCleared"]


def test_publisher_sends_topic_sequence_and_payload() -> None:
    pub = KVEventPublisher("tcp://127.0.0.1:*", "kv@127.0.0.1@m")
    sub: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"kv@")
    sub.connect(pub.endpoint)
    try:
        deadline = time.monotonic() + 5.0
        got = None
        while got is None and time.monotonic() < deadline:  # PUB drops until SUB is joined
            pub.publish(1.0, EVENTS[:1])
            if sub.poll(50):
                got = sub.recv_multipart()
        assert got is not None
        topic, seq, payload = got
        assert topic == b"kv@127.0.0.1@m"
        assert len(seq) == 8
        assert msgpack.unpackb(payload)[1][0][0] == "BlockStored"
    finally:
        sub.close(linger=0)
        pub.close()
