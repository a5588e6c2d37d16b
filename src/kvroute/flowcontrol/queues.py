"""The sans-IO flow-control core: bands, flows, capacity, TTL and the dispatch decision.

No clock, no I/O, no asyncio: callers pass ``now`` and the pool's saturation, and get back
what to dispatch or drop. The async shell (:mod:`kvroute.flowcontrol.runtime`) owns waiting.

* **Bands**: one per priority value; unlisted priorities get the default band's limits and
  policies (``defaultNegativePriorityBand`` for priority < 0). Served in strict priority order.
* **Flows**: one per fairness ID within a band; a heap ordered by the band's ordering policy.
  An unknown priority or fairness ID is simply a new band or flow.
* **Capacity** (checked at enqueue): per band ``maxRequests`` / ``maxBytes``, and the global
  ``maxBytes`` / ``maxRequests`` when set. A full band makes room by longest-queue drop: the
  arrival displaces the newest (last-to-dispatch) item of the band's largest flow, unless its
  own flow is the largest, in which case the arrival is refused. One flow can therefore not
  fill the band and get everyone else's requests refused (with one flow: plain tail drop).
* **Dispatch** (:meth:`FlowQueues.next_dispatch`): walk bands from the highest priority; the
  first non-empty band is the only candidate. If ``saturation >= ceiling`` for it the cycle
  stops (head-of-line blocking: a lower band never overtakes a waiting higher one); otherwise
  fairness picks a flow and ordering its head.
* **TTL**: :meth:`FlowQueues.expire` returns the items whose deadline has passed.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

from kvroute.flowcontrol.item import QueueItem, QueueOutcome
from kvroute.flowcontrol.policies import (
    FairnessPolicy,
    FcfsOrdering,
    OrderingPolicy,
    StaticUsageLimit,
    UsageLimitPolicy,
    default_fairness,
)


@dataclass(frozen=True, slots=True)
class BandSettings:
    max_requests: int = 5000
    max_bytes: int = 1_000_000_000
    ordering: OrderingPolicy = field(default_factory=FcfsOrdering)
    fairness: FairnessPolicy = field(default_factory=default_fairness)


@dataclass(frozen=True, slots=True)
class FlowControlSettings:
    """The resolved ``flowControl`` section (see :mod:`kvroute.flowcontrol.config`)."""

    default_band: BandSettings = field(default_factory=BandSettings)
    default_negative_band: BandSettings | None = None
    bands: dict[int, BandSettings] = field(default_factory=dict)
    max_bytes: int | None = None  # global; None = unlimited
    max_requests: int | None = None
    request_ttl: float = 60.0  # seconds; 0 = no TTL
    no_endpoint_ttl: float = 60.0
    usage_limit: UsageLimitPolicy = field(default_factory=StaticUsageLimit)

    def band_settings(self, priority: int) -> BandSettings:
        explicit = self.bands.get(priority)
        if explicit is not None:
            return explicit
        if priority < 0 and self.default_negative_band is not None:
            return self.default_negative_band
        return self.default_band


_Entry = tuple[tuple[float, int], int, QueueItem]


class Flow:
    """The queue of one fairness ID in one band.

    ``_heap`` orders by the band's ordering policy (head = next to dispatch). ``_tail`` is the
    reverse order, built only once the flow first loses an item to displacement (see
    :meth:`FlowQueues.enqueue`) and dropped again when stale entries pile up, so flows that are
    never displaced pay nothing for it. Both drop removed items lazily."""

    __slots__ = ("_heap", "_ordering", "_tail", "bytes", "count", "fairness_id")

    def __init__(self, fairness_id: str, ordering: OrderingPolicy) -> None:
        self.fairness_id = fairness_id
        self._ordering = ordering
        self._heap: list[_Entry] = []
        self._tail: list[_Entry] | None = None
        self.count = 0
        self.bytes = 0

    def push(self, item: QueueItem) -> None:
        key = self._ordering.sort_key(item)
        heapq.heappush(self._heap, (key, item.seq, item))
        self.count += 1
        self.bytes += item.size_bytes
        tail = self._tail
        if tail is not None:
            if len(tail) > 2 * self.count + 64:  # mostly dispatched entries: rebuild when needed
                self._tail = None
            else:
                heapq.heappush(tail, ((-key[0], -key[1]), -item.seq, item))

    def pop_tail(self) -> QueueItem | None:
        """Remove and return the item that would dispatch last (the caller sets its outcome)."""
        tail = self._tail
        if tail is None:
            tail = self._tail = [
                ((-k[0], -k[1]), -seq, it) for k, seq, it in self._heap if it.queued
            ]
            heapq.heapify(tail)
        while tail and not tail[0][2].queued:
            heapq.heappop(tail)
        if not tail:
            return None
        item = heapq.heappop(tail)[2]
        self.count -= 1
        self.bytes -= item.size_bytes
        if len(self._heap) > 2 * self.count + 64:  # displaced entries linger in the head heap
            self._heap = [e for e in self._heap if e[2].queued and e[2] is not item]
            heapq.heapify(self._heap)
        return item

    def head(self) -> QueueItem | None:
        heap = self._heap
        while heap and not heap[0][2].queued:  # lazily drop removed items
            heapq.heappop(heap)
        return heap[0][2] if heap else None

    def pop(self) -> QueueItem:
        item = self.head()
        assert item is not None
        heapq.heappop(self._heap)
        self.count -= 1
        self.bytes -= item.size_bytes
        return item


def _flow_size(f: Flow) -> tuple[int, int]:
    return (f.count, f.bytes)


class Band:
    __slots__ = ("bytes", "count", "flows", "priority", "settings")

    def __init__(self, priority: int, settings: BandSettings) -> None:
        self.priority = priority
        self.settings = settings
        self.flows: dict[str, Flow] = {}  # insertion order = round-robin order
        self.count = 0
        self.bytes = 0

    def active_flows(self) -> list[Flow]:
        return [f for f in self.flows.values() if f.count > 0]


class FlowQueues:
    """All queued requests of one EPP replica (single-threaded; see the module docstring)."""

    def __init__(self, settings: FlowControlSettings | None = None) -> None:
        self.settings = settings or FlowControlSettings()
        self._bands: dict[int, Band] = {}
        self._order: list[int] = []  # band priorities, highest first
        self._expiry: list[tuple[float, int, QueueItem]] = []
        self._seq = itertools.count()
        self._displaced: list[QueueItem] = []
        self.count = 0
        self.bytes = 0

    # -- enqueue / remove -----------------------------------------------------------------------

    def ttl_for(self, pool_empty: bool) -> float:
        ttl = self.settings.no_endpoint_ttl if pool_empty else self.settings.request_ttl
        return ttl if ttl > 0 else math.inf

    def enqueue(self, item: QueueItem, *, pool_empty: bool = False) -> QueueOutcome | None:
        """Queue ``item`` (its ``seq`` and, unless set, ``expires_at`` are assigned here).

        Returns ``None`` when queued, else the rejection outcome (capacity; 503 when the pool
        is empty)."""
        band = self._band(item.priority)
        if self._full(band, item) and not self._make_room(band, item):
            item.outcome = (
                QueueOutcome.REJECTED_NO_ENDPOINTS if pool_empty else QueueOutcome.REJECTED_CAPACITY
            )
            return item.outcome
        item.seq = next(self._seq)
        if item.expires_at == math.inf:
            item.expires_at = item.enqueued_at + self.ttl_for(pool_empty)
        flow = band.flows.get(item.fairness_id)
        if flow is None:
            flow = band.flows[item.fairness_id] = Flow(item.fairness_id, band.settings.ordering)
        flow.push(item)
        band.count += 1
        band.bytes += item.size_bytes
        self.count += 1
        self.bytes += item.size_bytes
        if item.expires_at < math.inf:
            heapq.heappush(self._expiry, (item.expires_at, item.seq, item))
        return None

    def _full(self, band: Band, item: QueueItem) -> bool:
        s = self.settings
        return (
            band.count + 1 > band.settings.max_requests
            or band.bytes + item.size_bytes > band.settings.max_bytes
            or (s.max_requests is not None and self.count + 1 > s.max_requests)
            or (s.max_bytes is not None and self.bytes + item.size_bytes > s.max_bytes)
        )

    def _make_room(self, band: Band, item: QueueItem) -> bool:
        """Longest-queue drop: while ``item`` does not fit, displace the last-to-dispatch item of
        the band's largest flow (by requests, then bytes), as long as that flow stays at least as
        large as ``item``'s own. False (nothing more displaced; ``item`` is refused) when
        ``item``'s flow is itself the largest: a flow that holds more than its share of the
        band's room is the one that gets the 429s, not a quiet tenant arriving after it."""
        own = band.flows.get(item.fairness_id)
        own_count = (own.count if own is not None else 0) + 1
        while self._full(band, item):
            victim_flow = max(band.flows.values(), key=_flow_size, default=None)
            if victim_flow is None or victim_flow is own or victim_flow.count <= own_count:
                return False
            victim = victim_flow.pop_tail()
            if victim is None:
                return False
            victim.outcome = QueueOutcome.EVICTED_QUEUE_PRESSURE
            self._uncount(band, victim)
            if victim_flow.count == 0:
                del band.flows[victim_flow.fairness_id]
            self._displaced.append(victim)
        return True

    def take_displaced(self) -> list[QueueItem]:
        """The items displaced by enqueues since the last call; the caller answers them (429
        ``evicted-queue-pressure``)."""
        out, self._displaced = self._displaced, []
        return out

    def remove(self, item: QueueItem, outcome: QueueOutcome) -> bool:
        """Take a still-queued ``item`` out with ``outcome``; False if it already left."""
        if not item.queued:
            return False
        item.outcome = outcome
        band = self._bands[item.priority]
        flow = band.flows[item.fairness_id]
        flow.count -= 1  # the heap entry is dropped lazily
        flow.bytes -= item.size_bytes
        self._uncount(band, item)
        if flow.count == 0:
            del band.flows[item.fairness_id]
        return True

    def _uncount(self, band: Band, item: QueueItem) -> None:
        band.count -= 1
        band.bytes -= item.size_bytes
        self.count -= 1
        self.bytes -= item.size_bytes

    # -- dispatch -------------------------------------------------------------------------------

    def blocked_band(self, saturation: float) -> int | None:
        """The priority of the first non-empty band, if the usage limit holds it back."""
        band = self._first_nonempty()
        if band is None:
            return None
        ceiling = self.settings.usage_limit.ceiling(band.priority, saturation)
        return band.priority if saturation >= ceiling else None

    def next_dispatch(self, saturation: float, now: float) -> QueueItem | None:
        """The item to dispatch now, or None (empty, or head-of-line blocked)."""
        band = self._first_nonempty()
        if band is None:
            return None
        if saturation >= self.settings.usage_limit.ceiling(band.priority, saturation):
            return None
        flows = band.active_flows()
        flow = flows[0] if len(flows) == 1 else None
        if flow is None:
            chosen = band.settings.fairness.select_flow(flows, band.settings.ordering, now)
            flow = band.flows[chosen.fairness_id]
        item = flow.pop()
        item.outcome = QueueOutcome.DISPATCHED
        self._uncount(band, item)
        if flow.count == 0:
            del band.flows[flow.fairness_id]
        band.settings.fairness.on_dispatch(item, now)
        return item

    def dispatched_inline(self, item: QueueItem, now: float) -> None:
        """Account ``item``, dispatched without queueing (the fast path), to its flow.

        A fairness policy with memory (``program-aware-fairness``) must see every dispatch, not
        only those that left a queue: otherwise a tenant served on the fast path while queues
        were empty (a warm-up, a lull) carries no attained service into the contention that
        follows, and is favoured there (measured: 1.29x its fair share in the noisy-neighbour
        bench without this, 0.88x with it)."""
        item.outcome = QueueOutcome.DISPATCHED
        self.settings.band_settings(item.priority).fairness.on_dispatch(item, now)

    def _first_nonempty(self) -> Band | None:
        if self.count == 0:
            return None
        for priority in self._order:
            band = self._bands[priority]
            if band.count:
                return band
        return None

    # -- TTL, shutdown --------------------------------------------------------------------------

    def next_expiry(self) -> float:
        heap = self._expiry
        while heap and not heap[0][2].queued:
            heapq.heappop(heap)
        return heap[0][0] if heap else math.inf

    def expire(self, now: float, *, pool_empty: bool = False) -> list[QueueItem]:
        """Remove and return the items whose TTL passed (outcome EvictedTTL/NoEndpoints)."""
        out = []
        outcome = QueueOutcome.EVICTED_NO_ENDPOINTS if pool_empty else QueueOutcome.EVICTED_TTL
        heap = self._expiry
        while heap and heap[0][0] <= now:
            _, _, item = heapq.heappop(heap)
            if self.remove(item, outcome):
                out.append(item)
        return out

    def drain(self, outcome: QueueOutcome) -> list[QueueItem]:
        """Remove every queued item with ``outcome`` (shutdown)."""
        out = list(self.items())
        for item in out:
            self.remove(item, outcome)
        self._expiry.clear()
        return out

    def items(self) -> Iterator[QueueItem]:
        for band in self._bands.values():
            for flow in band.flows.values():
                for _, _, item in flow._heap:
                    if item.queued:
                        yield item

    # -- stats ----------------------------------------------------------------------------------

    def band_stats(self) -> list[tuple[int, int, int, BandSettings]]:
        """``(priority, requests, bytes, settings)`` per known band."""
        return [(b.priority, b.count, b.bytes, b.settings) for b in self._bands.values()]

    def flow_stats_bytes(self) -> list[tuple[int, str, int, int]]:
        """``(priority, fairness id, requests, bytes)`` per non-empty flow."""
        return [
            (b.priority, f.fairness_id, f.count, f.bytes)
            for b in self._bands.values()
            for f in b.flows.values()
            if f.count
        ]

    def flow_stats(self) -> list[tuple[int, str, int]]:
        """``(priority, fairness id, requests)`` per non-empty flow."""
        return [
            (b.priority, f.fairness_id, f.count)
            for b in self._bands.values()
            for f in b.flows.values()
            if f.count
        ]

    def _band(self, priority: int) -> Band:
        band = self._bands.get(priority)
        if band is None:
            band = self._bands[priority] = Band(priority, self.settings.band_settings(priority))
            self._order = sorted(self._bands, reverse=True)
        return band
