"""Global-socket KV events (``kvEventsConfig.zmqEndpoint``) and the SUB topic filter, over real
ZMQ on loopback: engines' PUB sockets connect to the one SUB socket the EPP binds."""

from __future__ import annotations

import asyncio
import contextlib

import zmq
import zmq.asyncio

from kvroute.datalayer.kvevents import BlockStored, KvEventBatch, KvEventSubscriber, encode_message
from kvroute.datalayer.kvevents_bound import BoundKvEventListener, topic_pod_id
from tests.unit.datalayer.test_kvevents import RecordingSink, _until

STORED = KvEventBatch(1.0, (BlockStored((1,), None, (7, 7), 2),))


def test_topic_pod_id() -> None:
    assert topic_pod_id("kv@10.0.0.7:8000@Qwen/Qwen3-8B") == "10.0.0.7:8000"
    assert topic_pod_id("kv@pod-a") == "pod-a"
    assert topic_pod_id("kv") is None
    assert topic_pod_id("kv@@m") is None


def test_sequences_are_tracked_per_pod_and_bad_topics_dropped() -> None:
    sink = RecordingSink()
    listener = BoundKvEventListener(sink, "tcp://127.0.0.1:*", reorder_window=0)
    listener.on_frames(encode_message("kv@a:1@m", 7, STORED))
    listener.on_frames(encode_message("kv@b:1@m", 0, STORED))  # b's own baseline
    listener.on_frames(encode_message("kv@a:1@m", 8, STORED))
    listener.on_frames(encode_message("kv@a:1@m", 0, STORED))  # a restarted
    listener.on_frames(encode_message("kv", 9, STORED))  # no pod id: dropped
    assert [s for s, _ in sink.applied] == ["a:1", "b:1", "a:1", "a:1"]
    assert sink.resyncs == [("a:1", "publisher restarted")]
    assert listener.decode_errors == 1
    assert listener.pods == {"a:1", "b:1"}
    listener.forget("a:1")
    listener.on_frames(encode_message("kv@a:1@m", 40, STORED))  # a new baseline, no resync
    assert sink.resyncs == [("a:1", "publisher restarted")]


async def test_engines_connect_to_the_bound_socket_and_are_told_apart_by_topic() -> None:
    sink = RecordingSink()
    listener = BoundKvEventListener(sink, "tcp://127.0.0.1:*", topic_filter="kv@")
    runner = asyncio.create_task(listener.run())
    ctx = zmq.asyncio.Context()
    pubs = [ctx.socket(zmq.PUB) for _ in range(2)]
    try:
        await asyncio.wait_for(listener.bound.wait(), 5)
        assert listener.last_endpoint is not None
        for pub in pubs:
            pub.setsockopt(zmq.LINGER, 0)
            pub.connect(listener.last_endpoint)  # the engine side connects (vLLM: host, not *)

        async def publish_until_heard() -> None:
            while {s for s, _ in sink.applied} != {"10.0.0.1:8000", "10.0.0.2:8000"}:
                await pubs[0].send_multipart(encode_message("kv@10.0.0.1:8000@m", 0, STORED))
                await pubs[1].send_multipart(encode_message("kv@10.0.0.2:8000@m", 0, STORED))
                await pubs[1].send_multipart(encode_message("other@10.0.0.3:8000@m", 0, STORED))
                await asyncio.sleep(0.02)

        await asyncio.wait_for(publish_until_heard(), 5)
        assert "10.0.0.3:8000" not in listener.pods  # filtered by the SUB topic prefix
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        for pub in pubs:
            pub.close(0)
        ctx.term()
    assert not listener.bound.is_set()


async def test_subscriber_topic_filter_drops_other_topics() -> None:
    ctx = zmq.asyncio.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    sink = RecordingSink()
    subscriber = KvEventSubscriber(sink, topic_filter="kv@")
    runner = asyncio.create_task(subscriber.run())
    try:
        subscriber.subscribe("a", f"tcp://127.0.0.1:{port}")
        other = KvEventBatch(2.0, (BlockStored((2,), None, (8, 8), 2),))
        while not sink.applied:
            await pub.send_multipart(encode_message("metrics", 0, other))
            await pub.send_multipart(encode_message("kv@a@m", 0, STORED))
            await asyncio.sleep(0.02)
        await _until(sink, lambda: sink.applied)
        assert all(batch == STORED for _, batch in sink.applied)
    finally:
        await subscriber.aclose()
        assert runner.done()
        pub.close(0)
        ctx.term()
