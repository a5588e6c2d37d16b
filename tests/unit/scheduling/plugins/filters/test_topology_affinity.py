"""topology-affinity-filter and topology-affinity-scorer: unit rules, then a real P/D cycle
where the topology comes from topology-extractor attached to a real Datastore and the peer is
the decode pick disagg-profile-handler publishes."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from kvroute.config.epp_config import load_epp_config, parse_epp_config
from kvroute.datalayer.topology import TopologyExtractor
from kvroute.datastore.endpoint import Endpoint
from kvroute.datastore.store import Datastore
from kvroute.errors import PluginValidationError
from kvroute.framework.hooks import UPSTREAM_HEADERS
from kvroute.framework.topology import Topology
from kvroute.plugins.registry import PluginContext, default_registry
from kvroute.protocol.openai import parse_request
from kvroute.scheduling.builder import build_scheduling
from kvroute.scheduling.interfaces import CycleState
from kvroute.scheduling.plugins.filters.roles import ROLE_LABEL
from kvroute.scheduling.plugins.filters.topology_affinity import TopologyAffinityFilter
from kvroute.scheduling.plugins.profile_handlers.disagg import PEER_ENDPOINT
from kvroute.wiring import build_epp
from tests.fakes import NOW, make_endpoint, make_request, make_state, names

REGISTRY = default_registry(include_entry_points=False)


def ep(name: str, topo: Topology | None, key: str = "Topology") -> Endpoint:
    attrs = {} if topo is None else {key: topo}
    return replace(make_endpoint(name), attributes=MappingProxyType(attrs))


PEER = ep("d0", Topology(hostname="h1", rack="r1", zone="z1", region="eu"))
CANDIDATES = [
    ep("same-host", Topology(hostname="h1", rack="r1", zone="z1", region="eu")),
    ep("same-rack", Topology(hostname="h2", rack="r1", zone="z1", region="eu")),
    ep("same-zone", Topology(hostname="h3", rack="r2", zone="z1", region="eu")),
    ep("same-region", Topology(hostname="h4", rack="r3", zone="z2", region="eu")),
    ep("far", Topology(hostname="h5", rack="r4", zone="z3", region="us")),
    ep("unknown", None),
]


def state_with_peer(peer: Endpoint | None = PEER) -> CycleState:
    state = make_state()
    if peer is not None:
        state.write(PEER_ENDPOINT, peer)
    return state


def build(type_name: str, params: dict[str, Any] | None = None) -> Any:
    return REGISTRY.create(type_name, type_name, params or {}, PluginContext())


@pytest.mark.parametrize(
    ("min_affinity", "expected"),
    [
        (None, ["same-host"]),  # default host
        ("host", ["same-host"]),
        ("rack", ["same-host", "same-rack"]),
        ("zone", ["same-host", "same-rack", "same-zone"]),
        ("region", ["same-host", "same-rack", "same-zone", "same-region"]),
    ],
)
def test_filter_keeps_candidates_within_min_affinity(
    min_affinity: str | None, expected: list[str]
) -> None:
    f = build(
        "topology-affinity-filter", {} if min_affinity is None else {"minAffinity": min_affinity}
    )
    assert isinstance(f, TopologyAffinityFilter)
    assert names(f.filter(state_with_peer(), make_request(), CANDIDATES)) == expected


@pytest.mark.parametrize(
    ("peer", "candidates"),
    [
        (None, CANDIDATES),  # no peer published (a decode-only cycle)
        (ep("d0", None), CANDIDATES),  # the peer has no topology
        (ep("d0", Topology()), CANDIDATES),  # ... or an empty one
        (PEER, CANDIDATES[1:]),  # nobody on the peer's host
    ],
)
def test_filter_fails_open(peer: Endpoint | None, candidates: list[Endpoint]) -> None:
    f = build("topology-affinity-filter")
    state = state_with_peer(peer)
    assert names(f.filter(state, make_request(), candidates)) == names(candidates)


def test_producer_name_selects_the_attribute() -> None:
    peer = ep("d0", Topology(hostname="h1"), key="Topology/nvl")
    cands = [ep("a", Topology(hostname="h1"), key="Topology/nvl"), ep("b", Topology(hostname="h1"))]
    s = build("topology-affinity-scorer", {"topologyProducerName": "nvl"})
    assert dict(s.score(state_with_peer(peer), make_request(), cands)) == {"a": 1.0, "b": 0.0}
    f = build("topology-affinity-filter", {"topologyProducerName": "nvl"})
    assert names(f.filter(state_with_peer(peer), make_request(), cands)) == ["a"]
    # default producer: the peer's attribute is another producer's, so no peer topology
    assert dict(
        build("topology-affinity-scorer").score(state_with_peer(peer), make_request(), cands)
    ) == {
        "a": 0.0,
        "b": 0.0,
    }


@pytest.mark.parametrize(
    ("type_name", "params", "field"),
    [
        ("topology-affinity-filter", {"minAffinity": "datacenter"}, "minAffinity"),
        ("topology-affinity-filter", {"minAffinity": 1}, "minAffinity"),
        ("topology-affinity-filter", {"affinity": "host"}, "affinity"),
        ("topology-affinity-scorer", {"minAffinity": "host"}, "minAffinity"),
    ],
)
def test_bad_parameters_are_named(type_name: str, params: dict[str, Any], field: str) -> None:
    with pytest.raises(PluginValidationError, match=f"{type_name}.*{field}"):
        build(type_name, params)


PD_TOPOLOGY = """
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: prefill-filter
- type: decode-filter
- type: max-score-picker
- type: topology-extractor
- type: topology-affinity-filter
  parameters: {minAffinity: MIN}
- type: topology-affinity-scorer
- type: always-disagg-pd-decider
- type: disagg-profile-handler
  parameters: {deciders: {prefill: always-disagg-pd-decider}}
schedulingProfiles:
- name: prefill
  plugins:
  - pluginRef: prefill-filter
  - pluginRef: topology-affinity-filter
  - pluginRef: max-score-picker
  - {pluginRef: queue-scorer, weight: 1}
  - {pluginRef: topology-affinity-scorer, weight: 1}
- name: decode
  plugins:
  - pluginRef: decode-filter
  - pluginRef: max-score-picker
  - {pluginRef: queue-scorer, weight: 1}
"""

HOST = "kubernetes.io/hostname"
RACK = "topology.kubernetes.io/rack"


def _pd_pick(
    min_affinity: str, pods: dict[str, tuple[str, dict[str, str], int]]
) -> tuple[str, str]:
    """Schedule one request over ``pods`` (name -> (role, topology labels, queue)); the decode
    and prefill picks."""
    config = parse_epp_config(PD_TOPOLOGY.replace("MIN", min_affinity))
    setup = build_scheduling(config, REGISTRY, rng=random.Random(0), clock=lambda: NOW)
    store = Datastore(clock=lambda: NOW)
    ext = setup.plugins["topology-extractor"]  # the config's own extractor, attached as wiring does
    assert isinstance(ext, TopologyExtractor)
    ext.attach(store)
    for i, (name, (role, labels, _)) in enumerate(pods.items()):
        store.upsert_endpoint(name, f"10.0.1.{i + 1}", 8000, {ROLE_LABEL: role, **labels})
    for name, (_, _, queue) in pods.items():
        store.update_metrics(name, make_endpoint(name, waiting=queue).metrics)
    state = CycleState(NOW)
    request = make_request()
    result = setup.scheduler.schedule(request, store.endpoints(), state=state)
    for hook in setup.hooks:
        if hasattr(hook, "pre_request"):
            hook.pre_request(state, request, result)
    decode = result.profile_results["decode"]
    prefill = result.profile_results["prefill"]
    assert decode is not None
    assert prefill is not None
    prefill_ep = store.get(prefill.targets[0].name)
    assert prefill_ep is not None
    assert state.get(UPSTREAM_HEADERS, {}).get("x-prefiller-host-port") == prefill_ep.hostport
    return decode.targets[0].name, prefill.targets[0].name


def test_pd_cycle_prefers_the_prefill_pod_near_the_decode_pick() -> None:
    pods = {
        "d": ("decode", {HOST: "h1", RACK: "r1"}, 0),
        "p-same-host": ("prefill", {HOST: "h1", RACK: "r1"}, 0),
        "p-same-rack": ("prefill", {HOST: "h2", RACK: "r1"}, 0),
        "p-far": ("prefill", {HOST: "h9", RACK: "r9"}, 0),
    }
    assert _pd_pick("host", pods) == ("d", "p-same-host")
    # the same-host pod is busy: the filter at rack keeps both rack pods, the queue decides
    busy = {**pods, "p-same-host": ("prefill", {HOST: "h1", RACK: "r1"}, 50)}
    assert _pd_pick("rack", busy) == ("d", "p-same-rack")
    # with minAffinity host the busy same-host pod is the only one kept
    assert _pd_pick("host", busy) == ("d", "p-same-host")


def test_pd_cycle_fails_open_when_no_prefill_pod_is_close() -> None:
    pods = {
        "d": ("decode", {HOST: "h1"}, 0),
        "p-busy": ("prefill", {HOST: "h7"}, 40),
        "p-idle": ("prefill", {HOST: "h8"}, 0),
    }
    assert _pd_pick("host", pods) == ("d", "p-idle")


CONFIGS = Path(__file__).parents[4] / "testdata" / "configs"


def test_director_with_the_pd_topology_config_sends_prefill_to_the_decode_host() -> None:
    """``pd-topology.yaml`` (the shape of upstream's pd-topology-epp-config.yaml) through
    build_epp and the Director: a long prompt disaggregates, and the prefiller header names the
    prefill pod on the decode pod's host even though another prefill pod is idle."""
    store = Datastore(clock=lambda: NOW)
    pods = [
        ("decode-a", "decode", "node-a", 0),
        ("prefill-a", "prefill", "node-a", 3),  # busier, but on the decode pod's host
        ("prefill-b", "prefill", "node-b", 0),
    ]
    for i, (name, role, host, _) in enumerate(pods):
        store.upsert_endpoint(name, f"10.0.2.{i + 1}", 8000, {ROLE_LABEL: role, HOST: host})
    for name, _, _, queue in pods:
        store.update_metrics(name, make_endpoint(name, waiting=queue).metrics)
    graph = build_epp(
        load_epp_config(CONFIGS / "pd-topology.yaml"),
        store,
        registry=REGISTRY,
        rng=random.Random(0),
        clock=lambda: NOW,
    )
    parsed = parse_request(json.dumps({"model": "m", "prompt": "long prompt " * 200}).encode())
    decision = graph.director.handle_request(parsed, {}, "r1")
    assert decision.result.primary is not None
    assert decision.result.primary.targets[0].name == "decode-a"
    assert decision.upstream_headers["x-prefiller-host-port"] == "10.0.2.2:8000"
    graph.director.handle_response_complete(decision, None)
    # the decode pod's host loses its prefill pod: the filter fails open, the idle one serves
    store.remove_endpoint("prefill-a")
    decision = graph.director.handle_request(parsed, {}, "r2")
    assert decision.upstream_headers["x-prefiller-host-port"] == "10.0.2.3:8000"
