"""session-affinity-filter and its multicluster variant: the hard session pin, both strategies,
through the real Director for the session_id bindings."""

from __future__ import annotations

import base64
import dataclasses
import json
import random
from types import MappingProxyType
from typing import Any

import pytest

from kvroute.config.epp_config import parse_epp_config
from kvroute.datastore.endpoint import EndpointMetrics
from kvroute.datastore.store import Datastore
from kvroute.errors import PluginValidationError
from kvroute.plugins.registry import PluginContext, default_registry
from kvroute.protocol.openai import parse_request
from kvroute.requestcontrol.director import Director
from kvroute.scheduling.builder import build_scheduling
from kvroute.scheduling.interfaces import ProfileResult, SchedulingResult
from kvroute.scheduling.plugins.filters.session_affinity import SessionAffinityFilter
from kvroute.scheduling.request import InferenceRequest
from tests.fakes import make_endpoint, make_request, make_state

REGISTRY = default_registry(include_entry_points=False)
NOW = 50.0
CLUSTERS = [make_endpoint(n) for n in ("peers/cluster-a", "peers/cluster-b", "peers/cluster-c")]


def build(
    parameters: dict[str, Any], type_name: str = "multicluster-session-affinity-filter"
) -> SessionAffinityFilter:
    plugin = REGISTRY.create(type_name, "sa", parameters, PluginContext())
    assert isinstance(plugin, SessionAffinityFilter)
    assert plugin.typed_name.type == type_name
    return plugin


def with_headers(headers: dict[str, str]) -> InferenceRequest:
    return dataclasses.replace(make_request(), headers=MappingProxyType(headers))


def token(name: str) -> str:
    return base64.b64encode(name.encode()).decode()


def names(endpoints: Any) -> list[str]:
    return [e.name for e in endpoints]


@pytest.mark.parametrize(
    "type_name", ["session-affinity-filter", "multicluster-session-affinity-filter"]
)
def test_encoded_endpoint_header_pins_to_the_decoded_endpoint(type_name: str) -> None:
    f = build({}, type_name)  # the default strategy, header x-session-token
    pinned = f.filter(
        make_state(), with_headers({"x-session-token": token("peers/cluster-b")}), CLUSTERS
    )
    assert names(pinned) == ["peers/cluster-b"]
    everyone = names(CLUSTERS)
    for headers in (
        {},  # no session
        {"x-session-token": token("peers/gone")},  # its endpoint is no candidate
        {"x-session-token": "%%% not base64"},  # undecodable
    ):
        assert names(f.filter(make_state(), with_headers(headers), CLUSTERS)) == everyone


def test_encoded_header_is_configurable_and_matches_unnamespaced_endpoints() -> None:
    f = build({"encodedEndpointHeaderConfig": {"header": "X-Cluster-Token"}})
    pods = [make_endpoint("vllm-0"), make_endpoint("vllm-1")]
    got = f.filter(make_state(), with_headers({"x-cluster-token": token("default/vllm-1")}), pods)
    assert names(got) == ["vllm-1"]
    assert names(
        f.filter(make_state(), with_headers({"x-session-token": token("default/vllm-1")}), pods)
    ) == [
        "vllm-0",
        "vllm-1",
    ]


SESSION_CONFIG = """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: multicluster-session-affinity-filter
  name: session-affinity
  parameters:
    strategy: session_id
    sessionIdConfig:
      sources: [{header: x-session-id}, {attribute: agent-identity}]
      evictionTtlSeconds: 60
- type: random-picker
"""


def _director() -> tuple[Director, Datastore, SessionAffinityFilter]:
    setup = build_scheduling(
        parse_epp_config(SESSION_CONFIG), REGISTRY, rng=random.Random(7), clock=lambda: NOW
    )
    store = Datastore(clock=lambda: NOW)
    for i in range(5):
        store.upsert_endpoint(f"peers/cluster-{i}", f"gw-{i}.example.com", 443)
        store.update_metrics(f"peers/cluster-{i}", EndpointMetrics(updated_at=NOW))
    director = Director(
        store, None, setup.scheduler, setup.saturation_detector, setup.hooks, random.Random(8),
        clock=lambda: NOW,
    )  # fmt: skip
    plugin = setup.plugins["session-affinity"]
    assert isinstance(plugin, SessionAffinityFilter)
    return director, store, plugin


def _body() -> bytes:
    return json.dumps({"model": "m", "prompt": "hi", "max_tokens": 4}).encode()


def test_session_id_binds_at_pre_request_and_pins_later_requests() -> None:
    d, store, f = _director()
    first = d.handle_request(parse_request(_body()), {"x-session-id": "s1"}, "r0")
    assert f.bindings.bound("s1") == first.target.name
    later = {
        d.handle_request(parse_request(_body()), {"x-session-id": "s1"}, f"r{i}").target.name
        for i in range(1, 12)
    }
    assert later == {first.target.name}  # the random picker alone would spread them
    unpinned = {
        d.handle_request(parse_request(_body()), {}, f"n{i}").target.name for i in range(12)
    }
    assert len(unpinned) > 1  # no session: no pin
    # the agent-identity attribute is the fallback source
    agent = d.handle_request(parse_request(_body()), {"x-claude-code-session-id": "s2"}, "a0")
    assert f.bindings.bound("s2") == agent.target.name
    # the bound cluster leaves: the session passes through and is rebound where it went
    store.remove_endpoint(first.target.name)
    moved = d.handle_request(parse_request(_body()), {"x-session-id": "s1"}, "m0")
    assert moved.target.name != first.target.name
    assert f.bindings.bound("s1") == moved.target.name


def test_encoded_strategy_binds_nothing() -> None:
    f = build({"strategy": "encoded_endpoint_header", "sessionIdConfig": {"evictionTtlSeconds": 5}})
    request = with_headers({"x-session-id": "s"})
    picked = SchedulingResult({"default": ProfileResult((CLUSTERS[0],))}, "default")
    f.pre_request(make_state(), request, picked)
    assert f.bindings.bound("s") is None
    stateful = build({"strategy": "session_id"})  # the same call binds under session_id
    stateful.pre_request(make_state(), request, picked)
    assert stateful.bindings.bound("s") == CLUSTERS[0].name


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"strategy": "cookie"}, "parameters.strategy"),
        (
            {"sessionIdConfig": {"sources": [{"header": "a", "attribute": "agent-identity"}]}},
            "exactly one",
        ),
        ({"sessionIdConfig": {"evictionTtlSeconds": -1}}, "evictionTtlSeconds"),
        ({"encodedEndpointHeaderConfig": {"header": ""}}, "encodedEndpointHeaderConfig.header"),
        ({"header": "x"}, "parameters.header"),  # the scorer's flat spelling is not the filter's
    ],
)
def test_bad_parameters_name_the_field(params: dict[str, Any], field: str) -> None:
    with pytest.raises(PluginValidationError, match=field):
        build(params)


def test_zero_eviction_settings_mean_the_defaults() -> None:
    f = build({"strategy": "session_id", "sessionIdConfig": {"evictionTtlSeconds": 0}})
    assert f.bindings.params.eviction_ttl_seconds == 300.0
    assert f.bindings.params.eviction_sweep_seconds == 10.0
