"""Lifecycle capabilities a plugin may declare beside its extension points.

The composition root (:mod:`kvroute.wiring`) classifies every plugin against these protocols
once, when the config is built, and runs the lifecycle wherever the EPP's object graph is built:

* :class:`DatastoreAttachable` -- ``attach(datastore)`` at build time: the plugin reads the
  current endpoints and follows the datastore itself (the precise prefix scorer: one KV-event
  subscription per endpoint);
* :class:`DatastoreListener` -- ``endpoint_event(event)``, subscribed at build time when the
  plugin does not attach itself (the approximate prefix index prunes a server that leaves);
* :class:`BackgroundTask` -- ``run_background()``, a loop run (supervised) for as long as the
  graph runs; cancelled on exit;
* :class:`AsyncClosable` -- ``aclose()``, awaited once when the graph stops.
* :class:`PrefixBlockHolder` -- ``blocks_held(endpoint)``: prefix blocks a prefix index holds
  for an endpoint (shown on the live pool page).
* :class:`ReplicatedState` -- state only this replica knows and its active-active peers should
  (:mod:`kvroute.replicasync`): the approximate index's inserts, the precise index's speculative
  entries; a session-affinity plugin's bindings use the same seam (entries ``[session,
  endpoint, remaining_ttl_s]``).
* :class:`DecisionCounter` -- ``decision_counts()``: ``(model_name, decision_type) -> count``
  (the P/D handler; exported as ``llm_d_epp_disagg_decision_total``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from kvroute.datastore.store import Datastore, EndpointEvent


@runtime_checkable
class DatastoreAttachable(Protocol):
    def attach(self, datastore: Datastore) -> None: ...


@runtime_checkable
class DatastoreListener(Protocol):
    def endpoint_event(self, event: EndpointEvent) -> None: ...


@runtime_checkable
class BackgroundTask(Protocol):
    async def run_background(self) -> None: ...


@runtime_checkable
class AsyncClosable(Protocol):
    async def aclose(self) -> None: ...


@runtime_checkable
class PrefixBlockHolder(Protocol):
    def blocks_held(self, endpoint: str) -> int: ...


@runtime_checkable
class ReplicatedState(Protocol):
    """A plugin's state shared with peer replicas over one named channel.

    ``drain_replicated()`` returns the msgpack-able entries recorded locally since the last
    drain (recording starts with the first drain, so a plugin with no peers keeps nothing);
    ``merge_replicated(entries, now)`` applies a peer's entries -- never re-published -- after
    validating all of them: on a malformed entry it raises ``ValueError`` and applies none.
    Entries carry no absolute time (remaining durations only).
    """

    def replication_channel(self) -> str: ...

    def drain_replicated(self) -> list[Any]: ...

    def merge_replicated(self, entries: Sequence[object], now: float) -> None: ...


@runtime_checkable
class DecisionCounter(Protocol):
    def decision_counts(self) -> Mapping[tuple[str, str], int]: ...
