"""vLLM KV-cache events: a sans-IO decoder, a per-stream sequence tracker and a ZMQ SUB shell.

Wire format (``vllm/distributed/kv_events.py``, ``ZmqEventPublisher``): every publish is a
3-frame ZMQ multipart message ``[topic, seq, payload]`` where ``seq`` is an 8-byte big-endian
counter starting at 0 per publisher and ``payload`` is msgpack of
``KVEventBatch(ts, events, data_parallel_rank)``. Events are msgspec tagged structs:

* ``BlockStored(block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium,
  lora_name, extra_keys, group_idx, ...)``
* ``BlockRemoved(block_hashes, medium, group_idx)``
* ``AllBlocksCleared()``

vLLM has encoded these both as arrays (``array_like=True``: ``["BlockStored", hashes, ...]`` and
``[ts, events, dp_rank]``) and, in later versions, as maps (``{"type": "BlockStored",
"block_hashes": ...}``); :func:`decode_message` accepts both, and missing trailing fields take
their defaults. Block hashes are ``int`` or ``bytes`` (``ExternalBlockHash``); they are opaque
keys here.

:class:`SequenceTracker` turns the raw ``seq`` stream into "apply these batches" or "resync":
duplicates are dropped, a short reorder window absorbs out-of-order delivery, a gap that does not
fill in time or a lost connection means lost events (the caller must forget what it knew about
that server), and a sequence that jumps back to the start means the publisher restarted.

:class:`KvEventSubscriber` is the only I/O here: one ``zmq.asyncio`` SUB socket per server plus
its monitor socket (disconnects are reported as resyncs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import msgpack
import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

logger = logging.getLogger(__name__)

BlockHash = Hashable  # int or bytes, the engine's opaque block id


class KvEventDecodeError(ValueError):
    """A message that is not a well-formed vLLM KV event batch."""


@dataclass(frozen=True, slots=True)
class BlockStored:
    block_hashes: tuple[BlockHash, ...]
    parent_block_hash: BlockHash | None
    token_ids: tuple[int, ...]
    block_size: int
    lora_id: int | None = None
    medium: str | None = None
    lora_name: str | None = None
    group_idx: int | None = None


@dataclass(frozen=True, slots=True)
class BlockRemoved:
    block_hashes: tuple[BlockHash, ...]
    medium: str | None = None
    group_idx: int | None = None


@dataclass(frozen=True, slots=True)
class AllBlocksCleared:
    pass


KvEvent = BlockStored | BlockRemoved | AllBlocksCleared


@dataclass(frozen=True, slots=True)
class KvEventBatch:
    ts: float
    events: tuple[KvEvent, ...]
    data_parallel_rank: int | None = None


@dataclass(frozen=True, slots=True)
class KvEventMessage:
    topic: str
    seq: int
    batch: KvEventBatch


_STORED_FIELDS = (
    "block_hashes",
    "parent_block_hash",
    "token_ids",
    "block_size",
    "lora_id",
    "medium",
    "lora_name",
    "extra_keys",
    "group_idx",
)
_REMOVED_FIELDS = ("block_hashes", "medium", "group_idx")


def _hash_key(value: Any) -> BlockHash:
    if isinstance(value, int | bytes | str):
        return value
    if isinstance(value, list | tuple):  # never seen from vLLM, but keep it hashable
        return tuple(value)
    raise KvEventDecodeError(f"unsupported block hash type {type(value).__name__}")


def _fields(raw: Any, names: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """(tag, fields) of one tagged struct in array or map form."""
    if isinstance(raw, list | tuple) and raw and isinstance(raw[0], str):
        return raw[0], dict(zip(names, raw[1:], strict=False))
    if isinstance(raw, dict) and isinstance(raw.get("type"), str):
        return raw["type"], {k: v for k, v in raw.items() if k != "type"}
    raise KvEventDecodeError(f"not a tagged KV event: {raw!r:.80}")


def decode_event(raw: Any) -> KvEvent | None:
    """One event; ``None`` for an unknown tag (newer vLLM event types are skipped, not fatal)."""
    tag = raw[0] if isinstance(raw, list | tuple) and raw else None
    if isinstance(raw, dict):
        tag = raw.get("type")
    try:
        if tag == "BlockStored":
            _, f = _fields(raw, _STORED_FIELDS)
            parent = f.get("parent_block_hash")
            return BlockStored(
                block_hashes=tuple(_hash_key(h) for h in f["block_hashes"]),
                parent_block_hash=None if parent is None else _hash_key(parent),
                token_ids=tuple(int(t) for t in f["token_ids"]),
                block_size=int(f["block_size"]),
                lora_id=f.get("lora_id"),
                medium=f.get("medium"),
                lora_name=f.get("lora_name"),
                group_idx=f.get("group_idx"),
            )
        if tag == "BlockRemoved":
            _, f = _fields(raw, _REMOVED_FIELDS)
            return BlockRemoved(
                block_hashes=tuple(_hash_key(h) for h in f["block_hashes"]),
                medium=f.get("medium"),
                group_idx=f.get("group_idx"),
            )
        if tag == "AllBlocksCleared":
            return AllBlocksCleared()
    except (KeyError, TypeError, ValueError) as exc:
        raise KvEventDecodeError(f"malformed {tag} event: {exc}") from exc
    if tag is None:
        raise KvEventDecodeError(f"not a tagged KV event: {raw!r:.80}")
    return None


def decode_batch(payload: bytes) -> KvEventBatch:
    """msgpack payload -> :class:`KvEventBatch` (array or map encoding)."""
    try:
        raw = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise KvEventDecodeError(f"payload is not msgpack: {exc}") from exc
    if isinstance(raw, list | tuple) and len(raw) >= 2:
        ts, events, rank = raw[0], raw[1], raw[2] if len(raw) > 2 else None
    elif isinstance(raw, dict) and "events" in raw:
        ts, events, rank = raw.get("ts", 0.0), raw["events"], raw.get("data_parallel_rank")
    else:
        raise KvEventDecodeError(f"not a KV event batch: {raw!r:.80}")
    if not isinstance(events, list | tuple):
        raise KvEventDecodeError("batch events is not a list")
    decoded = tuple(e for e in (decode_event(r) for r in events) if e is not None)
    return KvEventBatch(ts=float(ts), events=decoded, data_parallel_rank=rank)


def decode_message(frames: Sequence[bytes]) -> KvEventMessage:
    """``[topic, seq, payload]`` as received from a SUB socket."""
    if len(frames) != 3:
        raise KvEventDecodeError(f"expected 3 frames, got {len(frames)}")
    topic, seq_bytes, payload = frames
    if len(seq_bytes) != 8:
        raise KvEventDecodeError(f"sequence frame has {len(seq_bytes)} bytes, expected 8")
    seq = int.from_bytes(seq_bytes, "big", signed=True)
    return KvEventMessage(
        topic=bytes(topic).decode("utf-8", "replace"), seq=seq, batch=decode_batch(payload)
    )


def encode_message(topic: str, seq: int, batch: KvEventBatch) -> list[bytes]:
    """The publisher side in array form (vLLM's ``array_like`` encoding); tests and tools."""
    events: list[Any] = []
    for e in batch.events:
        if isinstance(e, BlockStored):
            events.append(
                [
                    "BlockStored",
                    list(e.block_hashes),
                    e.parent_block_hash,
                    list(e.token_ids),
                    e.block_size,
                    e.lora_id,
                    e.medium,
                    e.lora_name,
                ]
            )
        elif isinstance(e, BlockRemoved):
            events.append(["BlockRemoved", list(e.block_hashes), e.medium])
        else:
            events.append(["AllBlocksCleared"])
    payload = msgpack.packb([batch.ts, events, batch.data_parallel_rank], use_bin_type=True)
    return [topic.encode(), seq.to_bytes(8, "big", signed=True), payload]


# -- sequence tracking -------------------------------------------------------------------------


class Verdict(StrEnum):
    APPLY = "apply"  # apply ``batches`` in order
    RESYNC = "resync"  # events were lost: forget this server's blocks, then apply ``batches``
    RESTART = "restart"  # the publisher restarted: its cache is empty; apply ``batches``


@dataclass(frozen=True, slots=True)
class SequenceOutcome:
    verdict: Verdict
    batches: tuple[KvEventBatch, ...]


class SequenceTracker:
    """Orders one publisher's batches by ``seq`` and detects loss and restarts.

    * first message ever: accepted as the baseline whatever its ``seq`` (we joined late);
    * ``seq == expected``: applied, plus any buffered successors;
    * ``seq < expected``: a duplicate (replay), dropped -- unless it is far behind
      (``< expected - reorder_window``) or 0, which means the publisher restarted;
    * ``seq > expected``: buffered for up to ``reorder_window`` messages; if the gap has not
      filled by then, the missing batches are declared lost (RESYNC) and the buffer is applied.
    """

    __slots__ = ("_expected", "_pending", "reorder_window")

    def __init__(self, reorder_window: int = 8) -> None:
        self.reorder_window = reorder_window
        self._expected: int | None = None
        self._pending: dict[int, KvEventBatch] = {}

    @property
    def expected(self) -> int | None:
        return self._expected

    def reset(self) -> None:
        """Forget the baseline (after a reconnect the next message starts a new one)."""
        self._expected = None
        self._pending.clear()

    def accept(self, seq: int, batch: KvEventBatch) -> SequenceOutcome:
        if self._expected is None:
            self._expected = seq + 1
            self._pending.clear()
            return SequenceOutcome(Verdict.APPLY, (batch,))
        expected = self._expected
        if seq < expected:
            if seq == 0 or seq < expected - self.reorder_window:
                self._expected = seq + 1
                self._pending.clear()
                return SequenceOutcome(Verdict.RESTART, (batch,))
            return SequenceOutcome(Verdict.APPLY, ())  # duplicate
        if seq == expected:
            return SequenceOutcome(Verdict.APPLY, self._drain(seq, batch))
        self._pending[seq] = batch
        if len(self._pending) <= self.reorder_window:
            return SequenceOutcome(Verdict.APPLY, ())
        # The gap did not fill: the missing batches are lost. Apply what we have, in order.
        ordered = tuple(self._pending[s] for s in sorted(self._pending))
        self._expected = max(self._pending) + 1
        self._pending.clear()
        return SequenceOutcome(Verdict.RESYNC, ordered)

    def _drain(self, seq: int, batch: KvEventBatch) -> tuple[KvEventBatch, ...]:
        out = [batch]
        nxt = seq + 1
        while nxt in self._pending:
            out.append(self._pending.pop(nxt))
            nxt += 1
        self._expected = nxt
        return tuple(out)


# -- I/O shell ---------------------------------------------------------------------------------


class KvEventSink(Protocol):
    """What the subscriber feeds (implemented by the precise prefix index)."""

    def apply(self, server: str, batch: KvEventBatch) -> None: ...

    def resync(self, server: str, reason: str) -> None: ...


@dataclass(slots=True)
class _Subscription:
    server: str
    endpoint: str
    tracker: SequenceTracker
    task: asyncio.Task[None] | None = None  # None until :meth:`KvEventSubscriber.run` runs


class KvEventSubscriber:
    """One SUB socket per server; decoded batches go to ``sink`` in sequence order.

    ``sync(targets)`` makes the subscriptions match ``{server: zmq_endpoint}``; ``subscribe`` /
    ``unsubscribe`` change one. They are plain calls (the datastore's listeners make them) and
    only record what to subscribe to: the sockets live in tasks of the task group that
    :meth:`run` owns, started when it starts (or at once while it runs) and all cancelled when
    it is cancelled or :meth:`aclose` is called. On a monitor DISCONNECTED event the server is
    resynced (its entries dropped and marked unknown) and the sequence baseline reset; ZMQ
    reconnects by itself and the next batch is a new baseline. ``topic_filter`` is the SUB
    socket's subscription prefix (``""``: every topic; upstream's default is ``"kv@"``).
    """

    def __init__(
        self,
        sink: KvEventSink,
        *,
        reorder_window: int = 8,
        on_connected: Callable[[str], None] | None = None,
        topic_filter: str = "",
    ) -> None:
        self._sink = sink
        self._reorder_window = reorder_window
        self._topic_filter = topic_filter.encode()
        self._ctx: zmq.asyncio.Context | None = None
        self._subs: dict[str, _Subscription] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._runner: asyncio.Task[Any] | None = None
        self._on_connected = on_connected
        self.decode_errors = 0
        self.closed = False

    @property
    def subscriptions(self) -> dict[str, str]:
        return {name: sub.endpoint for name, sub in self._subs.items()}

    @property
    def running(self) -> bool:
        return self._tg is not None

    def sync(self, targets: dict[str, str]) -> None:
        for name in [n for n in self._subs if targets.get(n) != self._subs[n].endpoint]:
            self.unsubscribe(name)
        for name, endpoint in targets.items():
            if name not in self._subs:
                self.subscribe(name, endpoint)

    def subscribe(self, server: str, endpoint: str) -> None:
        if self.closed:
            return
        self.unsubscribe(server)
        sub = _Subscription(server, endpoint, SequenceTracker(self._reorder_window))
        self._subs[server] = sub
        if self._tg is not None:
            self._start(self._tg, sub)

    def unsubscribe(self, server: str) -> None:
        sub = self._subs.pop(server, None)
        if sub is not None and sub.task is not None:
            sub.task.cancel()  # the task group awaits it

    async def run(self) -> None:
        """Own every subscription's task until cancelled; one ZMQ context for their sockets.

        A subscription task that crashes ends the group (and this call) with the error, for the
        caller's supervisor to log and restart; the recorded subscriptions start again then.
        """
        if self.closed or self._runner is not None:
            raise RuntimeError("KvEventSubscriber.run: closed or already running")
        self._runner = asyncio.current_task()
        self._ctx = zmq.asyncio.Context()
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                for sub in self._subs.values():
                    self._start(tg, sub)
                await asyncio.Event().wait()
        finally:
            self._tg = None
            self._runner = None
            for sub in self._subs.values():
                sub.task = None
            self._ctx.destroy(linger=0)
            self._ctx = None

    def _start(self, tg: asyncio.TaskGroup, sub: _Subscription) -> None:
        sub.tracker = SequenceTracker(self._reorder_window)
        sub.task = tg.create_task(
            self._run(sub.server, sub.endpoint, sub.tracker), name=f"kv-events {sub.server}"
        )

    async def aclose(self) -> None:
        """Stop for good: cancel :meth:`run` (and so every subscription) and wait for it."""
        self.closed = True
        self._subs.clear()
        runner = self._runner
        if runner is not None and runner is not asyncio.current_task():
            runner.cancel()
            await asyncio.wait([runner])

    async def _run(self, server: str, endpoint: str, tracker: SequenceTracker) -> None:
        assert self._ctx is not None  # set by run(), which owns this task
        sock = self._ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 5000)
        sock.setsockopt(zmq.SUBSCRIBE, self._topic_filter)
        monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        try:
            sock.connect(endpoint)
        except zmq.ZMQError as exc:  # a malformed address from a label: log, do not crash
            logger.warning("kv events for %s: cannot connect to %r: %s", server, endpoint, exc)
            self._sink.resync(server, "bad endpoint")
            monitor.close(0)
            sock.close(0)
            return
        poller = zmq.asyncio.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        try:
            while True:
                for ready, _ in await poller.poll():
                    if ready is monitor:
                        self._on_monitor(server, tracker, await monitor.recv_multipart())
                    else:
                        self._on_frames(server, tracker, await sock.recv_multipart())
        finally:
            with contextlib.suppress(zmq.ZMQError):
                sock.disable_monitor()
            monitor.close(0)
            sock.close(0)

    def _on_monitor(self, server: str, tracker: SequenceTracker, frames: list[bytes]) -> None:
        event = parse_monitor_message(frames)["event"]
        if event == zmq.EVENT_DISCONNECTED:
            tracker.reset()
            self._sink.resync(server, "disconnected")
        elif event == zmq.EVENT_CONNECTED and self._on_connected is not None:
            self._on_connected(server)

    def _on_frames(self, server: str, tracker: SequenceTracker, frames: list[bytes]) -> None:
        try:
            message = decode_message(frames)
        except KvEventDecodeError as exc:
            self.decode_errors += 1
            logger.debug("kv events from %s: %s", server, exc)
            return
        outcome = tracker.accept(message.seq, message.batch)
        if outcome.verdict is Verdict.RESYNC:
            self._sink.resync(server, "sequence gap")
        elif outcome.verdict is Verdict.RESTART:
            self._sink.resync(server, "publisher restarted")
        for batch in outcome.batches:
            self._sink.apply(server, batch)
