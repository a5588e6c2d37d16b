"""topology-affinity-scorer: upstream's fixed proximity curve against the published peer.
(The producer-name rule and a full P/D cycle with the filter are in
tests/unit/scheduling/plugins/filters/test_topology_affinity.py.)"""

from __future__ import annotations

from kvroute.framework.topology import Topology
from kvroute.plugins.registry import PluginContext, default_registry
from kvroute.scheduling.interfaces import ScorerCategory
from kvroute.scheduling.plugins.scorers.topology_affinity import TopologyAffinityScorer
from tests.fakes import make_request
from tests.unit.scheduling.plugins.filters.test_topology_affinity import (
    CANDIDATES,
    ep,
    state_with_peer,
)

REGISTRY = default_registry(include_entry_points=False)


def build() -> TopologyAffinityScorer:
    s = REGISTRY.create("topology-affinity-scorer", "s", {}, PluginContext())
    assert isinstance(s, TopologyAffinityScorer)
    return s


def test_scorer_curve() -> None:
    s = build()
    assert s.category is ScorerCategory.AFFINITY
    assert dict(s.score(state_with_peer(), make_request(), CANDIDATES)) == {
        "same-host": 1.0,
        "same-rack": 0.2,
        "same-zone": 0.05,
        "same-region": 0.02,
        "far": 0.0,
        "unknown": 0.0,
    }
    assert set(s.score(state_with_peer(None), make_request(), CANDIDATES).values()) == {0.0}


def test_peer_without_topology_gives_no_preference() -> None:
    s = build()
    for peer in (ep("d0", None), ep("d0", Topology())):
        assert set(s.score(state_with_peer(peer), make_request(), CANDIDATES).values()) == {0.0}
