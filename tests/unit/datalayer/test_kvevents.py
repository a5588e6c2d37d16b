"""vLLM KV-event decoding, sequence tracking and the ZMQ subscriber.

Payloads are produced with ``msgspec`` structs declared exactly as ``vllm/distributed/kv_events.py``
declares them (both the older ``array_like`` encoding and the current map encoding), so the
decoder is checked against the real wire format, not against our own encoder only. The
subscriber test uses a real ZMQ PUB socket on loopback.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
import msgspec
import pytest
import zmq
import zmq.asyncio

from kvroute.datalayer.kvevents import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    KvEventBatch,
    KvEventDecodeError,
    KvEventSubscriber,
    SequenceTracker,
    Verdict,
    decode_batch,
    decode_message,
    encode_message,
)

# -- vLLM's structs (current: map encoding) ------------------------------------------------------


class _EventBatch(msgspec.Struct, omit_defaults=True, gc=False):
    ts: float
    events: list[Any]
    data_parallel_rank: int | None = None


class _KVCacheEvent(msgspec.Struct, omit_defaults=True, gc=False, tag=True):
    pass


class _BlockStored(_KVCacheEvent, tag="BlockStored"):
    block_hashes: list[bytes | int]
    parent_block_hash: bytes | int | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None
    lora_name: str | None
    extra_keys: list[tuple[Any, ...] | None] | None = None
    group_idx: int | None = None


class _BlockRemoved(_KVCacheEvent, tag="BlockRemoved"):
    block_hashes: list[bytes | int]
    medium: str | None
    group_idx: int | None = None


class _AllBlocksCleared(_KVCacheEvent, tag="AllBlocksCleared"):
    pass


# -- vLLM's older structs (array_like) -----------------------------------------------------------


class _OldBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    ts: float
    events: list[Any]
    data_parallel_rank: int | None = None


class _OldEvent(msgspec.Struct, array_like=True, omit_defaults=True, gc=False, tag=True):
    pass


class _OldStored(_OldEvent, tag="BlockStored"):
    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None


class _OldRemoved(_OldEvent, tag="BlockRemoved"):
    block_hashes: list[int]
    medium: str | None


class _OldCleared(_OldEvent, tag="AllBlocksCleared"):
    pass


ENCODER = msgspec.msgpack.Encoder()


def test_decodes_current_vllm_map_encoding() -> None:
    payload = ENCODER.encode(
        _EventBatch(
            ts=12.5,
            events=[
                _BlockStored(
                    [b"\x01" * 32, b"\x02" * 32], None, [1, 2, 3, 4], 2, None, "GPU", None
                ),
                _BlockRemoved([b"\x01" * 32], "GPU", group_idx=0),
                _AllBlocksCleared(),
            ],
            data_parallel_rank=1,
        )
    )
    batch = decode_batch(payload)
    assert batch == KvEventBatch(
        ts=12.5,
        events=(
            BlockStored((b"\x01" * 32, b"\x02" * 32), None, (1, 2, 3, 4), 2, None, "GPU", None),
            BlockRemoved((b"\x01" * 32,), "GPU", 0),
            AllBlocksCleared(),
        ),
        data_parallel_rank=1,
    )


def test_decodes_older_array_like_encoding() -> None:
    payload = ENCODER.encode(
        _OldBatch(
            ts=1.0,
            events=[
                _OldStored([11, 12], 10, [5, 6, 7, 8], 2, 3, None),
                _OldRemoved([11], None),
                _OldCleared(),
            ],
        )
    )
    batch = decode_batch(payload)
    assert batch.events == (
        BlockStored((11, 12), 10, (5, 6, 7, 8), 2, lora_id=3),
        BlockRemoved((11,)),
        AllBlocksCleared(),
    )
    assert batch.data_parallel_rank is None


def test_unknown_event_types_are_skipped() -> None:
    payload = msgpack.packb({"ts": 0.0, "events": [{"type": "SomethingNew", "x": 1}]})
    assert decode_batch(payload).events == ()


@pytest.mark.parametrize(
    "frames",
    [
        [b"t", b"\x00" * 8],
        [b"t", b"\x00" * 4, msgpack.packb([0.0, []])],
        [b"t", b"\x00" * 8, b"\xc1"],
        [b"t", b"\x00" * 8, msgpack.packb({"no": "events"})],
        [b"t", b"\x00" * 8, msgpack.packb([0.0, [["BlockStored", [1]]]])],
        [b"t", b"\x00" * 8, msgpack.packb([0.0, [42]])],
    ],
    ids=["two-frames", "short-seq", "not-msgpack", "not-a-batch", "truncated-event", "untagged"],
)
def test_malformed_messages_raise(frames: list[bytes]) -> None:
    with pytest.raises(KvEventDecodeError):
        decode_message(frames)


def test_encode_decode_roundtrip_with_seq() -> None:
    batch = KvEventBatch(3.0, (BlockStored((1,), None, (9, 9), 2), BlockRemoved((1,))), 0)
    message = decode_message(encode_message("kv@pod@m", 2**40, batch))
    assert (message.topic, message.seq, message.batch) == ("kv@pod@m", 2**40, batch)


# -- sequence tracking ---------------------------------------------------------------------------


def _b(n: int) -> KvEventBatch:
    return KvEventBatch(float(n), ())


@pytest.mark.parametrize(
    ("seqs", "expected"),
    [
        ([5, 6, 7], [("apply", [5]), ("apply", [6]), ("apply", [7])]),
        ([0, 2, 1], [("apply", [0]), ("apply", []), ("apply", [1, 2])]),
        ([0, 1, 1, 0], [("apply", [0]), ("apply", [1]), ("apply", []), ("restart", [0])]),
        ([0, 3, 4, 5], [("apply", [0]), ("apply", []), ("apply", []), ("resync", [3, 4, 5])]),
        ([100, 101, 3], [("apply", [100]), ("apply", [101]), ("restart", [3])]),
    ],
    ids=["in-order", "out-of-order-healed", "duplicate-then-restart", "gap-resync", "far-back"],
)
def test_sequence_tracker(seqs: list[int], expected: list[tuple[str, list[int]]]) -> None:
    tracker = SequenceTracker(reorder_window=2)
    got = []
    for s in seqs:
        outcome = tracker.accept(s, _b(s))
        got.append((outcome.verdict.value, [int(b.ts) for b in outcome.batches]))
    assert got == expected


def test_tracker_reset_takes_next_message_as_baseline() -> None:
    tracker = SequenceTracker()
    tracker.accept(0, _b(0))
    tracker.reset()
    assert tracker.accept(50, _b(50)).verdict is Verdict.APPLY
    assert tracker.expected == 51


# -- subscriber over real ZMQ --------------------------------------------------------------------


class RecordingSink:
    def __init__(self) -> None:
        self.applied: list[tuple[str, KvEventBatch]] = []
        self.resyncs: list[tuple[str, str]] = []
        self.changed = asyncio.Event()

    def apply(self, server: str, batch: KvEventBatch) -> None:
        self.applied.append((server, batch))
        self.changed.set()

    def resync(self, server: str, reason: str) -> None:
        self.resyncs.append((server, reason))
        self.changed.set()


async def _until(sink: RecordingSink, predicate: Any) -> None:
    async def wait() -> None:
        while not predicate():
            sink.changed.clear()
            await sink.changed.wait()

    await asyncio.wait_for(wait(), 5.0)


async def test_subscriber_delivers_batches_and_detects_gap_and_disconnect() -> None:
    ctx = zmq.asyncio.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    sink = RecordingSink()
    connected = asyncio.Event()
    subscriber = KvEventSubscriber(sink, reorder_window=0, on_connected=lambda _: connected.set())
    runner = asyncio.create_task(subscriber.run())  # owns the subscriptions' task group
    try:
        subscriber.sync({"a": f"tcp://127.0.0.1:{port}"})
        assert subscriber.subscriptions == {"a": f"tcp://127.0.0.1:{port}"}
        await asyncio.wait_for(connected.wait(), 5)
        stored = KvEventBatch(1.0, (BlockStored((1,), None, (7, 7), 2),))
        # a slow-joining SUB may miss the first publishes: repeat seq 0 until it lands
        while not sink.applied:
            await pub.send_multipart(encode_message("kv", 0, stored))
            await asyncio.sleep(0.02)
        await pub.send_multipart([b"kv", b"\x00", b"garbage"])  # counted, not fatal
        await pub.send_multipart(encode_message("kv", 5, stored))  # 1..4 lost
        await _until(sink, lambda: sink.resyncs)
        assert sink.resyncs == [("a", "sequence gap")]
        assert sink.applied[0] == ("a", stored)
        assert subscriber.decode_errors == 1
        pub.close(0)  # the publisher goes away: the subscriber must not trust its index
        await _until(sink, lambda: len(sink.resyncs) > 1)
        assert sink.resyncs[-1] == ("a", "disconnected")
        subscriber.sync({})
        assert subscriber.subscriptions == {}
    finally:
        await subscriber.aclose()
        assert runner.done()  # aclose ends run(), and with it every subscription task
        pub.close(0)
        ctx.term()


async def test_malformed_endpoint_marks_server_unknown_without_crashing() -> None:
    sink = RecordingSink()
    subscriber = KvEventSubscriber(sink)
    subscriber.subscribe("a", "not-a-zmq-address")  # recorded; opened once run() runs
    assert not subscriber.running
    assert sink.resyncs == []
    runner = asyncio.create_task(subscriber.run())
    try:
        await _until(sink, lambda: sink.resyncs)
        assert sink.resyncs == [("a", "bad endpoint")]
        assert not runner.done()  # a bad address ends its own task, not the subscriber
    finally:
        await subscriber.aclose()
