"""Global-socket KV events: one SUB socket the EPP binds; every engine connects and publishes.

This is llm-d-router's ``kvEventsConfig.zmqEndpoint`` mode (its "local subscriber", used by the
simulator samples with ``zmqEndpoint: tcp://0.0.0.0:5557``): instead of the EPP dialling each
engine's publisher (:class:`~kvroute.datalayer.kvevents.KvEventSubscriber`), the EPP binds the
address and the engines' PUB sockets connect to it (vLLM connects when its KV-events endpoint
names a host rather than ``*``). All engines share the socket, so the engine is told apart by the
message topic, which must be ``kv@<pod-id>@<model>`` (vLLM's ``--kv-events-config`` ``topic``;
upstream's adapter reads the same segment). ``<pod-id>`` is the server key the batches are fed
to the sink under; the precise producer keys its index by ``address:port`` (upstream's pod
identifier), so engines publish ``kv@10.0.0.7:8000@<model>``.

Each pod id has its own :class:`~kvroute.datalayer.kvevents.SequenceTracker` (``seq`` counts per
publisher). A bound socket cannot tell which peer disconnected, so a lost connection is seen as
a sequence gap (RESYNC) or a restart (seq back to 0) when the engine publishes again. A message
whose topic has no ``@<pod-id>`` segment, or that does not decode, is counted in
``decode_errors`` and dropped.
"""

from __future__ import annotations

import asyncio
import logging

import zmq
import zmq.asyncio

from kvroute.datalayer.kvevents import (
    KvEventDecodeError,
    KvEventSink,
    SequenceTracker,
    Verdict,
    decode_message,
)

logger = logging.getLogger(__name__)


def topic_pod_id(topic: str) -> str | None:
    """``<pod-id>`` of a ``kv@<pod-id>@<model>`` topic (``None`` when it has no such segment)."""
    parts = topic.split("@")
    if len(parts) < 2 or not parts[1]:
        return None
    return parts[1]


class BoundKvEventListener:
    """Bind ``address`` with one SUB socket; feed ``sink`` per pod id (see the module docstring).

    ``run()`` binds and receives until cancelled (a bind failure raises ``zmq.ZMQError`` for the
    caller's supervisor to log and retry); ``bound`` is set once the socket is bound and
    ``last_endpoint`` is the address it bound (with the actual port for ``tcp://host:*``).
    """

    def __init__(
        self,
        sink: KvEventSink,
        address: str,
        *,
        topic_filter: str = "kv@",
        reorder_window: int = 8,
    ) -> None:
        self.address = address
        self._sink = sink
        self._topic_filter = topic_filter.encode()
        self._reorder_window = reorder_window
        self._trackers: dict[str, SequenceTracker] = {}
        self.bound = asyncio.Event()
        self.last_endpoint: str | None = None
        self.decode_errors = 0
        self.pods: set[str] = set()  # pod ids heard from

    async def run(self) -> None:
        ctx = zmq.asyncio.Context()
        sock = ctx.socket(zmq.SUB)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SUBSCRIBE, self._topic_filter)
            sock.bind(self.address)
            raw = sock.getsockopt(zmq.LAST_ENDPOINT)
            self.last_endpoint = raw.decode() if isinstance(raw, bytes) else str(raw)
            self.bound.set()
            logger.info("kv events: bound %s (global socket)", self.last_endpoint)
            while True:
                self.on_frames(await sock.recv_multipart())
        finally:
            self.bound.clear()
            sock.close(0)
            ctx.term()

    def on_frames(self, frames: list[bytes]) -> None:
        """One received message (sans-IO: tests call it directly too)."""
        try:
            message = decode_message(frames)
        except KvEventDecodeError as exc:
            self.decode_errors += 1
            logger.debug("kv events on %s: %s", self.address, exc)
            return
        pod = topic_pod_id(message.topic)
        if pod is None:
            self.decode_errors += 1
            logger.debug("kv events on %s: topic %r has no @<pod-id>", self.address, message.topic)
            return
        tracker = self._trackers.get(pod)
        if tracker is None:
            tracker = self._trackers[pod] = SequenceTracker(self._reorder_window)
            self.pods.add(pod)
        outcome = tracker.accept(message.seq, message.batch)
        if outcome.verdict is Verdict.RESYNC:
            self._sink.resync(pod, "sequence gap")
        elif outcome.verdict is Verdict.RESTART:
            self._sink.resync(pod, "publisher restarted")
        for batch in outcome.batches:
            self._sink.apply(pod, batch)

    def forget(self, pod: str) -> None:
        """Drop ``pod``'s sequence baseline (its endpoint left; a return is a new baseline)."""
        self._trackers.pop(pod, None)
        self.pods.discard(pod)
