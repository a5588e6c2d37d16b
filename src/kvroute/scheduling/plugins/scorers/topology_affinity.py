"""``topology-affinity-scorer`` (Affinity): grade candidates by closeness to the peer (Alpha).

Upstream ``scorer/topologyaffinity``. The peer is the endpoint the other P/D stage picked
(see :mod:`kvroute.scheduling.plugins.filters.topology_affinity`); each candidate scores by the
tightest ``Topology`` tier it shares with the peer, on upstream's fixed curve shaped by
KV-transfer bandwidth: same host 1.0, same rack 0.2, same zone 0.05, same region 0.02, none 0.
Every candidate scores 0 when there is no peer or the peer has no topology; a candidate
without the attribute scores 0.

Parameters: ``topologyProducerName`` (the ``topology-extractor`` instance to read; default the
one named ``topology-extractor``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import Field

from kvroute.datastore.endpoint import Endpoint
from kvroute.framework.topology import Level, compare, topology_key, topology_of
from kvroute.plugins.base import TypedName
from kvroute.plugins.registry import PluginFactory, PluginHandle
from kvroute.scheduling.interfaces import CycleState, Scorer, ScorerCategory
from kvroute.scheduling.plugins.filters.topology_affinity import peer_topology
from kvroute.scheduling.plugins.params import PluginParams, parse_params
from kvroute.scheduling.request import InferenceRequest

TYPE = "topology-affinity-scorer"

LEVEL_SCORES: Mapping[Level, float] = {
    Level.HOST: 1.0,
    Level.RACK: 0.2,
    Level.ZONE: 0.05,
    Level.REGION: 0.02,
    Level.NONE: 0.0,
}


class TopologyAffinityScorerParams(PluginParams):
    topology_producer_name: str = Field("", alias="topologyProducerName")


class TopologyAffinityScorer:
    category = ScorerCategory.AFFINITY

    def __init__(self, name: str, params: TopologyAffinityScorerParams) -> None:
        self.typed_name = TypedName(TYPE, name)
        self.key = topology_key(params.topology_producer_name)

    def score(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        topo = peer_topology(state, self.key)
        if topo is None:
            return {e.name: 0.0 for e in endpoints}
        return {e.name: LEVEL_SCORES[compare(topo, topology_of(e, self.key))] for e in endpoints}


def _factory(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> Any:
    return TopologyAffinityScorer(
        name, parse_params(TopologyAffinityScorerParams, name, TYPE, parameters)
    )


PLUGINS: Mapping[str, PluginFactory] = {TYPE: _factory}

_: type[Scorer] = TopologyAffinityScorer
