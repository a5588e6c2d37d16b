"""``topology-affinity-filter``: keep prefill candidates close to the decode pick (Alpha).

Upstream ``filter/topologyaffinity``. In a P/D cycle ``disagg-profile-handler`` publishes the
endpoint the other stage picked as the peer (:data:`~kvroute.scheduling.plugins.
profile_handlers.disagg.PEER_ENDPOINT`, upstream's ``peer-endpoint`` attribute) before it runs
the next profile: the decode pick for the prefill profile (``decode-first``), the prefill pick
for the decode profile (``prefill-first``). The filter keeps the candidates whose ``Topology``
(written by ``topology-extractor``) shares a tier at ``minAffinity`` or tighter with the peer's
(host < rack < zone < region; an empty value never matches, not even another empty value).

It fails open -- returns every candidate -- when there is no peer, when the peer has no
topology, and when no candidate is close enough: topology affinity is a preference and must not
make a request unroutable. A candidate without the attribute never passes (unless the filter
fails open).

Parameters: ``minAffinity`` (``host``; ``rack``, ``zone``, ``region``) and
``topologyProducerName`` (the ``topology-extractor`` instance to read; default the one named
``topology-extractor``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import Field, field_validator

from kvroute.datastore.endpoint import Endpoint
from kvroute.framework.topology import Level, Topology, compare, topology_key, topology_of
from kvroute.plugins.base import TypedName
from kvroute.plugins.registry import PluginFactory, PluginHandle
from kvroute.scheduling.interfaces import EXPLAIN, CycleState, Filter
from kvroute.scheduling.plugins.params import PluginParams, parse_params
from kvroute.scheduling.plugins.profile_handlers.disagg import PEER_ENDPOINT
from kvroute.scheduling.request import InferenceRequest

TYPE = "topology-affinity-filter"


class TopologyAffinityFilterParams(PluginParams):
    min_affinity: str = Field("host", alias="minAffinity")
    topology_producer_name: str = Field("", alias="topologyProducerName")

    @field_validator("min_affinity")
    @classmethod
    def _level(cls, value: str) -> str:
        Level.parse(value or "host")
        return value or "host"


def peer_topology(state: CycleState, key: str) -> Topology | None:
    """The ``Topology`` (under ``key``) of the peer the P/D handler published; None when there
    is no peer or it has no known topology."""
    peer = state.get(PEER_ENDPOINT, None)
    topo = None if peer is None else topology_of(peer, key)
    return topo if topo is not None and topo.known else None


class TopologyAffinityFilter:
    def __init__(self, name: str, params: TopologyAffinityFilterParams) -> None:
        self.typed_name = TypedName(TYPE, name)
        self.min_affinity = Level.parse(params.min_affinity)
        self.key = topology_key(params.topology_producer_name)

    def filter(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Sequence[Endpoint]:
        topo = peer_topology(state, self.key)
        notes = state.get(EXPLAIN, None)
        if topo is None:
            if notes is not None:
                notes.append("no peer topology: all candidates kept")
            return endpoints
        kept = [
            e for e in endpoints if compare(topo, topology_of(e, self.key)) <= self.min_affinity
        ]
        if not kept:
            if notes is not None:
                notes.append(f"no candidate within {self.min_affinity.name.lower()}: all kept")
            return endpoints
        return kept


def _factory(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> Any:
    return TopologyAffinityFilter(
        name, parse_params(TopologyAffinityFilterParams, name, TYPE, parameters)
    )


PLUGINS: Mapping[str, PluginFactory] = {TYPE: _factory}

_: type[Filter] = TopologyAffinityFilter
