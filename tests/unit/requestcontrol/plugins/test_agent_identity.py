"""``agent-identity``: header priority, parameters, and the fairness ID it gives a request
through a director built from a real EndpointPickerConfig."""

from __future__ import annotations

import json
import random

import pytest

from kvroute.config.epp_config import parse_epp_config
from kvroute.datastore.store import Datastore
from kvroute.errors import PluginValidationError
from kvroute.plugins.registry import PluginContext, default_registry
from kvroute.protocol.openai import parse_request
from kvroute.requestcontrol.director import Director
from kvroute.requestcontrol.plugins.agent_identity import AgentIdentity
from kvroute.scheduling.builder import build_scheduling
from kvroute.scheduling.request import InferenceRequest
from tests.fakes import NOW, make_endpoint

REGISTRY = default_registry(include_entry_points=False)


def _build(parameters: dict[str, object] | None = None) -> AgentIdentity:
    plugin = REGISTRY.create("agent-identity", "ai", parameters or {}, PluginContext())
    assert isinstance(plugin, AgentIdentity)
    return plugin


def _attrs(plugin: AgentIdentity, headers: dict[str, str]) -> dict[str, str]:
    req = InferenceRequest(request_id="r", incoming_model="m", target_model="m", headers=headers)
    return dict(plugin.process_request_headers(req))


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"x-claude-code-session-id": "cc", "x-session-affinity": "oc", "session-id": "cx"}, "cc"),
        ({"x-session-affinity": "oc", "session-id": "cx", "session_id": "old"}, "oc"),
        ({"session-id": "cx", "session_id": "old"}, "cx"),
        ({"session_id": "old"}, "old"),
        ({"x-claude-code-session-id": "", "session_id": "old"}, "old"),  # empty is skipped
    ],
)
def test_built_in_headers_in_upstream_order(headers: dict[str, str], expected: str) -> None:
    assert _attrs(_build(), headers) == {"agent-identity": expected}


def test_no_session_header_sets_no_attribute() -> None:
    assert _attrs(_build(), {"x-other": "v"}) == {}


def test_additional_headers_come_first_lowercased_in_order() -> None:
    plugin = _build({"additionalSessionHeaders": ["X-My-Agent-Session", "x-another-agent-id"]})
    assert plugin.headers[:2] == ("x-my-agent-session", "x-another-agent-id")
    both = {"x-another-agent-id": "b", "x-claude-code-session-id": "cc"}
    assert _attrs(plugin, both) == {"agent-identity": "b"}
    assert _attrs(plugin, {**both, "x-my-agent-session": "a"}) == {"agent-identity": "a"}


@pytest.mark.parametrize(
    "parameters",
    [{"additionalSessionHeaders": "x-one"}, {"additionalSessionHeaders": [""]}, {"headers": []}],
)
def test_bad_parameters_are_rejected_by_name(parameters: dict[str, object]) -> None:
    field = next(iter(parameters))
    with pytest.raises(PluginValidationError, match=field):
        _build(parameters)


@pytest.mark.parametrize(
    ("headers", "flow"),
    [
        ({"x-session-affinity": "sess-7"}, "sess-7"),
        ({"x-session-affinity": "sess-7", "x-llm-d-inference-fairness-id": "tenant"}, "tenant"),
        ({}, "default-flow"),
    ],
)
def test_director_takes_the_fairness_id_from_it(headers: dict[str, str], flow: str) -> None:
    config = parse_epp_config(
        "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
        "plugins: [{type: agent-identity}, {type: random-picker}]\n"
        "schedulingProfiles: [{name: default, plugins: [{pluginRef: random-picker}]}]\n"
    )
    setup = build_scheduling(config, REGISTRY, rng=random.Random(0), clock=lambda: NOW)
    store = Datastore(clock=lambda: NOW)
    e = make_endpoint("e0")
    store.upsert_endpoint(e.name, e.address, e.port, e.labels)
    director = Director(
        store, None, setup.scheduler, setup.saturation_detector, setup.hooks, clock=lambda: NOW
    )
    parsed = parse_request(json.dumps({"model": "m", "prompt": "hi"}).encode())
    decision = director.handle_request(parsed, headers, "r1")
    assert decision.request.fairness_id == flow
    expected = {"agent-identity": "sess-7"} if "x-session-affinity" in headers else {}
    assert dict(decision.request.attributes) == expected
