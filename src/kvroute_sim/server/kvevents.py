"""KV events on a ZMQ PUB socket in vLLM's wire shape (``--kv-events-config`` publisher).

Each message is a ZMQ multipart ``[topic, seq, payload]``: ``seq`` is an 8-byte big-endian
counter and ``payload`` is msgpack of a ``KVEventBatch`` as vLLM 0.11's msgspec structs
(``array_like=True``, tagged) encode it::

    [ts, [event, ...]]
    BlockStored      -> ["BlockStored", [hash, ...], parent_hash|None, [token_id, ...],
                         block_size, lora_id|None, "GPU"]
    BlockRemoved     -> ["BlockRemoved", [hash, ...], "GPU"]
    AllBlocksCleared -> ["AllBlocksCleared"]

Hashes are unsigned 64-bit ints (``kvroute_sim.tokenizer.block_hashes``). The topic defaults to
``kv@127.0.0.1@<model>`` (llm-d's ``kv@<pod-ip>@<model>`` convention). Encoding is pure
(``encode_batch``); ``KVEventPublisher`` is the socket shell.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack
import zmq

from kvroute_sim.kvcache import AllBlocksCleared, BlockRemoved, BlockStored, KVEvent

MEDIUM = "GPU"


def event_to_wire(ev: KVEvent) -> list[Any]:
    """One event as vLLM's array-like tagged struct."""
    if isinstance(ev, BlockStored):
        return [
            "BlockStored",
            list(ev.block_hashes),
            ev.parent_block_hash,
            list(ev.token_ids),
            ev.block_size,
            ev.lora_id,
            MEDIUM,
        ]
    if isinstance(ev, BlockRemoved):
        return ["BlockRemoved", list(ev.block_hashes), MEDIUM]
    if isinstance(ev, AllBlocksCleared):
        return ["AllBlocksCleared"]
    raise TypeError(f"not a KV event: {ev!r}")


def encode_batch(ts: float, events: Sequence[KVEvent]) -> bytes:
    """The msgpack payload of one ``KVEventBatch``."""
    payload: bytes = msgpack.packb([ts, [event_to_wire(e) for e in events]])
    return payload


def decode_batch(payload: bytes) -> tuple[float, list[list[Any]]]:
    """Inverse of ``encode_batch`` (for tests and for consumers without msgspec)."""
    ts, events = msgpack.unpackb(payload)
    return float(ts), list(events)


class KVEventPublisher:
    """A ZMQ PUB socket that sends one batch per engine step that produced events."""

    def __init__(self, endpoint: str, topic: str) -> None:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._sock = ctx.socket(zmq.PUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SNDHWM, 100_000)
        self._sock.bind(endpoint)
        self.endpoint = str(self._sock.getsockopt_string(zmq.LAST_ENDPOINT))
        self._topic = topic.encode()
        self._seq = 0

    def publish(self, ts: float, events: Sequence[KVEvent]) -> None:
        if not events:
            return
        payload = encode_batch(ts, events)
        try:
            self._sock.send_multipart(
                [self._topic, self._seq.to_bytes(8, "big"), payload], flags=zmq.NOBLOCK
            )
        except zmq.Again:
            return  # subscriber too slow: drop, as a PUB socket at its high-water mark does
        self._seq += 1

    def close(self) -> None:
        self._sock.close(linger=0)
