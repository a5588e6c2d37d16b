"""``request-attribute-reporter``: parameters, CEL over usage (real cel-python), and the value
recorded when the director completes a request (the ext_proc side:
tests/unit/extproc/test_response_metadata.py)."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from kvroute.config.epp_config import parse_epp_config
from kvroute.datastore.store import Datastore
from kvroute.errors import PluginValidationError
from kvroute.framework.request import Usage
from kvroute.plugins.registry import PluginContext, default_registry
from kvroute.protocol.openai import parse_request
from kvroute.requestcontrol.director import Director
from kvroute.requestcontrol.plugins.request_attribute_reporter import (
    Report,
    RequestAttributeReporter,
)
from kvroute.scheduling.builder import build_scheduling
from tests.fakes import NOW, make_endpoint

REGISTRY = default_registry(include_entry_points=False)
SUM = "usage.prompt_tokens + usage.completion_tokens"


def _build(attr: dict[str, Any]) -> RequestAttributeReporter:
    plugin = REGISTRY.create(
        "request-attribute-reporter", "r", {"attributes": [attr]}, PluginContext()
    )
    assert isinstance(plugin, RequestAttributeReporter)
    return plugin


def test_namespace_defaults_to_envoy_lb() -> None:
    p = _build({"key": {"name": "cost"}, "expression": SUM})
    assert (p.namespace, p.key) == ("envoy.lb", "cost")
    assert (
        _build({"key": {"namespace": "", "name": "c"}, "expression": SUM}).namespace == "envoy.lb"
    )
    assert (
        _build({"key": {"namespace": "my.ns", "name": "c"}, "expression": SUM}).namespace == "my.ns"
    )


@pytest.mark.parametrize(
    ("parameters", "field"),
    [
        ({}, "attributes"),
        ({"attributes": []}, "attributes"),
        ({"attributes": [{"key": {"name": "a"}, "expression": SUM}] * 2}, "attributes"),
        ({"attributes": [{"key": {"name": ""}, "expression": SUM}]}, "name"),
        ({"attributes": [{"key": {"name": "a"}, "expression": ""}]}, "expression"),
        ({"attributes": [{"key": {"name": "a"}, "expression": "usage."}]}, "expression"),
        (
            {"attributes": [{"key": {"name": "a"}, "expression": SUM, "condition": "&&"}]},
            "condition",
        ),
        ({"attributes": [{"key": {"name": "a"}, "expr": SUM}]}, "expr"),
    ],
)
def test_bad_parameters_fail_at_load_naming_the_field(
    parameters: dict[str, Any], field: str
) -> None:
    with pytest.raises(PluginValidationError, match=field):
        REGISTRY.create("request-attribute-reporter", "r", parameters, PluginContext())


def test_expression_and_condition() -> None:
    p = _build(
        {
            "key": {"name": "cost"},
            "expression": "usage.prompt_tokens + 2.0 * usage.completion_tokens",  # doubles
            "condition": "has(usage.completion_tokens) && usage.completion_tokens > 0.0",
        }
    )
    assert p.evaluate(Usage(prompt_tokens=10, completion_tokens=5)) == 20
    assert p.evaluate(Usage(prompt_tokens=10, completion_tokens=0)) is None  # condition false
    # usage numbers are doubles (a protobuf Struct upstream): CEL has no int x double overload
    mixed = _build({"key": {"name": "m"}, "expression": "2 * usage.completion_tokens"})
    assert mixed.evaluate(Usage(prompt_tokens=10, completion_tokens=5)) is None
    total = _build({"key": {"name": "t"}, "expression": "usage.total_tokens / 2.0"})
    assert total.evaluate(Usage(prompt_tokens=3, completion_tokens=4)) == 3  # 3.5 truncated


def test_zero_missing_fields_and_non_numbers_report_nothing() -> None:
    cached = _build(
        {"key": {"name": "c"}, "expression": "usage.prompt_tokens_details.cached_tokens"}
    )
    assert cached.evaluate(Usage(prompt_tokens=10)) is None  # no cached tokens: no field
    assert cached.evaluate(Usage(prompt_tokens=10, cached_tokens=8)) == 8
    zero = _build({"key": {"name": "z"}, "expression": "usage.completion_tokens"})
    assert zero.evaluate(Usage(prompt_tokens=1)) is None
    text = _build({"key": {"name": "s"}, "expression": "'x'"})
    assert text.evaluate(Usage(prompt_tokens=1)) is None


def test_value_recorded_when_the_director_completes_the_request() -> None:
    config = parse_epp_config(
        "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n"
        "- name: total-tokens-cost-reporter\n  type: request-attribute-reporter\n"
        "  parameters:\n    attributes:\n"
        "    - key: {name: x-gateway-inference-request-cost}\n"
        f"      expression: '{SUM}'\n"
        "      condition: 'has(usage.prompt_tokens) && has(usage.completion_tokens)'\n"
        "- type: random-picker\n"
        "schedulingProfiles: [{name: default, plugins: [{pluginRef: random-picker}]}]\n"
    )
    setup = build_scheduling(config, REGISTRY, rng=random.Random(0), clock=lambda: NOW)
    store = Datastore(clock=lambda: NOW)
    e = make_endpoint("e0")
    store.upsert_endpoint(e.name, e.address, e.port, e.labels)
    director = Director(
        store, None, setup.scheduler, setup.saturation_detector, setup.hooks, clock=lambda: NOW
    )
    reporter = setup.plugins["total-tokens-cost-reporter"]
    assert isinstance(reporter, RequestAttributeReporter)
    parsed = parse_request(json.dumps({"model": "m", "prompt": "hi"}).encode())
    decision = director.handle_request(parsed, {}, "req-1")
    director.handle_response_complete(decision, Usage(prompt_tokens=12, completion_tokens=30))
    director.handle_response_complete(decision, Usage(prompt_tokens=99))  # once per decision
    other = director.handle_request(parsed, {}, "req-2")
    director.handle_response_complete(other, None)  # no usage read: nothing to report
    assert list(reporter.reports) == [
        Report("req-1", "envoy.lb", "x-gateway-inference-request-cost", 42)
    ]
    assert decision.response_metadata == {"envoy.lb": {"x-gateway-inference-request-cost": 42.0}}
    assert other.response_metadata == {}
