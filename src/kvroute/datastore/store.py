"""The pool's endpoints and their latest metric snapshots: one in-memory store, no I/O.

Writers are the Kubernetes watcher (``upsert_endpoint``/``remove_endpoint``), the scraper
(``update_metrics``) and the director (``on_request_sent``/``on_request_finished``). The reader
on the hot path is the scheduler, which calls :meth:`Datastore.endpoints` once per request; that
call returns a cached tuple and costs O(1) unless something changed since the last call.

Everything runs on one event loop, so there are no locks: each method finishes before another
coroutine can observe the store, which plays the role of GIE's ``atomic.Pointer`` swaps.
Listeners registered with :meth:`Datastore.subscribe` learn about endpoints that appear,
disappear or get new labels (the scraper starts and stops its polling tasks on them; the prefix
index prunes a removed endpoint's entries).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from kvroute.datastore.endpoint import Endpoint, EndpointLoad, EndpointMetrics
from kvroute.datastore.health import PassiveHealth


class EndpointEventKind(StrEnum):
    ADDED = "added"
    REMOVED = "removed"
    LABELS_CHANGED = "labels_changed"  # same server (address and port), new labels


@dataclass(frozen=True, slots=True)
class EndpointEvent:
    """One change of the endpoint set; ``endpoint`` is the new value (the old one for REMOVED)."""

    kind: EndpointEventKind
    endpoint: Endpoint


EndpointListener = Callable[[EndpointEvent], None]
# Called after every local in-flight change that was applied: (endpoint, +1 sent / -1 finished,
# tokens, model). The replica-sync core (:mod:`kvroute.replicasync`) turns these into deltas.
LoadObserver = Callable[[str, int, int, str], None]


class Datastore:
    """Endpoints by name, with a cached snapshot tuple for the scheduler.

    ``clock`` stamps snapshots that arrive without an ``updated_at`` (tests pass a fake clock).
    """

    __slots__ = (
        "_by_hostport",
        "_by_name",
        "_clock",
        "_listeners",
        "_load_observer",
        "_snapshot",
        "health",
    )

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.health = PassiveHealth(clock)  # errors seen on responses (issue 20 finding 5)
        self._by_name: dict[str, Endpoint] = {}
        self._by_hostport: dict[str, str] = {}
        self._snapshot: tuple[Endpoint, ...] | None = ()
        self._listeners: list[EndpointListener] = []
        self._load_observer: LoadObserver | None = None

    # -- endpoint set ---------------------------------------------------------------------

    def upsert_endpoint(
        self,
        name: str,
        address: str,
        port: int,
        labels: Mapping[str, str] | None = None,
        *,
        node_address: str = "",
    ) -> Endpoint:
        """Add an endpoint or update an existing one; returns the stored value.

        A change of labels (or of the node address) alone keeps the metrics snapshot and the
        load counters (same server, new metadata). A change of address or port is a different
        server (a restarted pod got a new IP): it is reported as REMOVED then ADDED and starts
        with empty metrics and load, so the old server's numbers are never attributed to the
        new one.
        """
        frozen_labels = MappingProxyType(dict(labels or {}))
        old = self._by_name.get(name)
        if old is not None and old.address == address and old.port == port:
            if old.labels == frozen_labels and old.node_address == node_address:
                return old
            new = dataclasses.replace(old, labels=frozen_labels, node_address=node_address)
            self._by_name[name] = new
            self._snapshot = None
            self._notify(EndpointEvent(EndpointEventKind.LABELS_CHANGED, new))
            return new
        if old is not None:
            self.remove_endpoint(name)
        new = Endpoint(
            name=name, address=address, port=port, labels=frozen_labels, node_address=node_address
        )
        self._by_name[name] = new
        self._by_hostport[new.hostport] = name
        self._snapshot = None
        self._notify(EndpointEvent(EndpointEventKind.ADDED, new))
        return new

    def remove_endpoint(self, name: str) -> Endpoint | None:
        """Forget an endpoint; returns what was stored, or None if it was unknown."""
        old = self._by_name.pop(name, None)
        if old is None:
            return None
        if self._by_hostport.get(old.hostport) == name:
            del self._by_hostport[old.hostport]
            self.health.forget(old.hostport)
        self._snapshot = None
        self._notify(EndpointEvent(EndpointEventKind.REMOVED, old))
        return old

    def endpoints(self) -> tuple[Endpoint, ...]:
        """All endpoints, in insertion order; the same tuple object until something changes."""
        snapshot = self._snapshot
        if snapshot is None:
            snapshot = self._snapshot = tuple(self._by_name.values())
        return snapshot

    def get(self, name: str) -> Endpoint | None:
        return self._by_name.get(name)

    def by_hostport(self, hostport: str) -> Endpoint | None:
        """Look up by ``ip:port`` (``[v6]:port`` for IPv6), the form Envoy reports back."""
        name = self._by_hostport.get(hostport)
        return None if name is None else self._by_name.get(name)

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    # -- metrics --------------------------------------------------------------------------

    def update_metrics(self, name: str, metrics: EndpointMetrics) -> Endpoint | None:
        """Swap in a new snapshot; returns the new endpoint, or None if it was removed meanwhile.

        ``load.sent_since_scrape`` goes back to 0: the new scrape already reflects the requests
        sent before it, so counting them again would double-count them. ``load.inflight`` stays:
        it is the EPP's own count of unfinished requests, not something a scrape can reset.
        """
        old = self._by_name.get(name)
        if old is None:
            return None
        if metrics.updated_at == 0.0:
            metrics = dataclasses.replace(metrics, updated_at=self._clock())
        new = dataclasses.replace(old, metrics=metrics)
        new.load.sent_since_scrape = 0
        self._by_name[name] = new
        self._snapshot = None
        return new

    # -- attributes (data-layer extractors) -----------------------------------------------

    def set_attributes(self, name: str, updates: Mapping[str, object | None]) -> Endpoint | None:
        """Merge ``updates`` into an endpoint's attributes (a ``None`` value removes the key).

        Returns the new endpoint, or None when it is unknown (removed meanwhile). Metrics and the
        load counters are kept; a change of address starts with no attributes (a new server).
        """
        old = self._by_name.get(name)
        if old is None:
            return None
        merged = dict(old.attributes)
        for key, value in updates.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        if merged == old.attributes:
            return old
        new = dataclasses.replace(old, attributes=MappingProxyType(merged))
        self._by_name[name] = new
        self._snapshot = None
        return new

    # -- in-flight accounting -------------------------------------------------------------

    def on_request_sent(
        self, name: str, tokens: int = 0, *, model: str = "", prefill_tokens: int | None = None
    ) -> None:
        """Count a request the picker just sent (``tokens``: its estimated prompt tokens,
        ``model``: its target model, ``prefill_tokens``: the part of the prompt the endpoint
        must compute, i.e. not cached there; ``None`` = all of ``tokens``); a no-op for an
        endpoint no longer stored."""
        endpoint = self._by_name.get(name)
        if endpoint is None:
            return
        load = endpoint.load
        load.inflight += 1
        load.sent_since_scrape += 1
        load.inflight_tokens += max(0, tokens)
        load.prefill_tokens += max(0, tokens if prefill_tokens is None else prefill_tokens)
        if model:
            models = load.inflight_models
            models[model] = models.get(model, 0) + 1
        if self._load_observer is not None:
            self._load_observer(name, 1, max(0, tokens), model)

    def on_request_finished(
        self,
        name: str,
        tokens: int = 0,
        *,
        load: EndpointLoad | None = None,
        model: str = "",
        prefill_tokens: int | None = None,
    ) -> None:
        """Uncount a finished request; never below zero, a no-op for an unknown endpoint.

        ``tokens`` and ``model`` must be what the request was counted with. ``load`` is the
        counter object the request was counted on (``endpoint.load`` at send time). A request
        may finish after its endpoint was replaced by a new one with the same name and fresh
        counters; given ``load``, that finish leaves the new counters alone instead of
        uncounting a request they never counted. Without it, the floor at zero still keeps
        them from going negative. ``prefill_tokens``: what of the request is still counted in
        ``load.prefill_tokens`` (0 once :meth:`on_first_token` released it; ``None`` = ``tokens``).
        """
        endpoint = self._by_name.get(name)
        if endpoint is None or (load is not None and endpoint.load is not load):
            return
        load = endpoint.load
        held = tokens if prefill_tokens is None else prefill_tokens
        load.prefill_tokens -= min(max(0, held), load.prefill_tokens)
        if load.inflight <= load.remote_inflight:
            return  # nothing of ours is counted here (the local part is already 0)
        load.inflight -= 1
        taken = min(max(0, tokens), load.inflight_tokens - load.remote_tokens)
        load.inflight_tokens -= max(0, taken)
        if model:
            models = load.inflight_models
            left = models.get(model, 0) - 1
            if left > 0:
                models[model] = left
            elif left == 0:
                models.pop(model, None)
            if models.get(model, 0) < load.remote_models.get(model, 0):
                models[model] = load.remote_models[model]  # never below the peers' part
        if self._load_observer is not None:
            self._load_observer(name, -1, max(0, taken), model)

    def on_first_token(
        self, name: str, tokens: int = 0, *, load: EndpointLoad | None = None
    ) -> None:
        """The first response chunk of a request charged ``tokens`` prefill tokens passed: they
        leave ``prefill_tokens`` (the request stays in ``inflight_tokens`` until it finishes).
        Never below zero; a no-op for an unknown or replaced endpoint (``load`` as in
        :meth:`on_request_finished`)."""
        endpoint = self._by_name.get(name)
        if endpoint is None or (load is not None and endpoint.load is not load):
            return
        cur = endpoint.load
        cur.prefill_tokens -= min(max(0, tokens), cur.prefill_tokens)

    def observe_load(self, observer: LoadObserver | None) -> None:
        """Set (or clear) the one observer of local in-flight changes (the replica sync)."""
        self._load_observer = observer

    def set_remote_load(
        self, name: str, inflight: int, tokens: int, models: Mapping[str, int]
    ) -> None:
        """Replace the peers' part of ``name``'s in-flight ledger; the local part is untouched.

        The totals the scorers read move by the difference. A no-op for an unknown endpoint.
        """
        endpoint = self._by_name.get(name)
        if endpoint is None:
            return
        load = endpoint.load
        inflight, tokens = max(0, inflight), max(0, tokens)
        load.inflight += inflight - load.remote_inflight
        load.inflight_tokens += tokens - load.remote_tokens
        load.remote_inflight, load.remote_tokens = inflight, tokens
        totals, old = load.inflight_models, load.remote_models
        for model in set(old) | set(models):
            n = totals.get(model, 0) + max(0, models.get(model, 0)) - old.get(model, 0)
            if n > 0:
                totals[model] = n
            else:
                totals.pop(model, None)
        load.remote_models = {m: n for m, n in models.items() if n > 0}

    def add_remote_sent(self, name: str, sent: int) -> None:
        """Peers sent ``sent`` requests to ``name`` (since this replica's last scrape of it)."""
        endpoint = self._by_name.get(name)
        if endpoint is not None and sent > 0:
            endpoint.load.sent_since_scrape += sent

    def load_of(self, name: str) -> EndpointLoad | None:
        endpoint = self._by_name.get(name)
        return None if endpoint is None else endpoint.load

    # -- subscriptions --------------------------------------------------------------------

    def subscribe(self, listener: EndpointListener) -> Callable[[], None]:
        """Call ``listener`` on every later endpoint event; returns a function that unsubscribes.

        Listeners run synchronously after the store has changed, so they see the new state.
        Existing endpoints are not replayed: a subscriber reads :meth:`endpoints` first.
        An exception in a listener propagates to the writer (a bug there must be loud).
        """
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def _notify(self, event: EndpointEvent) -> None:
        for listener in tuple(self._listeners):
            listener(event)
