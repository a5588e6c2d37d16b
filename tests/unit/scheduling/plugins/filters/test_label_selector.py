"""label-selector-filter (and its by-label-selector alias) and the deprecated by-label filter,
built through the registry as a config builds them, and run in a scheduling profile."""

from __future__ import annotations

import logging
import random
from typing import Any

import pytest

from kvroute.config.epp_config import parse_epp_config
from kvroute.errors import PluginValidationError
from kvroute.plugins.registry import PluginContext, default_registry
from kvroute.scheduling.builder import build_scheduling
from kvroute.scheduling.interfaces import EMPTY_REASON, Filter
from tests.fakes import NOW, make_endpoint, make_request, make_state, names

REGISTRY = default_registry(include_entry_points=False)

POOL = [
    make_endpoint("p0", labels={"role": "prefill", "gpu": "h100"}),
    make_endpoint("d1", labels={"role": "decode", "gpu": "h100"}),
    make_endpoint("d2", labels={"role": "decode", "gpu": "a100"}),
    make_endpoint("u3"),  # no labels
]


def expr(key: str, operator: str, values: list[str] | None = None) -> dict[str, object]:
    """A selector with the one matchExpressions term ``key operator values``."""
    term: dict[str, object] = {"key": key, "operator": operator}
    if values is not None:
        term["values"] = values
    return {"matchExpressions": [term]}


def build(type_name: str, params: dict[str, Any]) -> Filter:
    plugin = REGISTRY.create(type_name, "f", params, PluginContext())
    assert plugin.typed_name.type == type_name
    return plugin  # type: ignore[return-value]


def run(f: Filter) -> list[str]:
    return names(f.filter(make_state(), make_request(), POOL))


@pytest.mark.parametrize("type_name", ["label-selector-filter", "by-label-selector"])
@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, ["p0", "d1", "d2", "u3"]),
        ({"matchLabels": {"role": "decode"}}, ["d1", "d2"]),
        ({"matchLabels": {"role": "decode", "gpu": "h100"}}, ["d1"]),
        (expr("role", "In", ["prefill"]), ["p0"]),
        (
            expr("role", "NotIn", ["decode"]),
            ["p0", "u3"],
        ),
        (expr("role", "DoesNotExist"), ["u3"]),
        (
            {
                "matchLabels": {"gpu": "h100"},
                "matchExpressions": [{"key": "role", "operator": "Exists"}],
            },
            ["p0", "d1"],
        ),
    ],
)
def test_selector_filter(type_name: str, params: dict[str, Any], expected: list[str]) -> None:
    assert run(build(type_name, params)) == expected


def test_selector_filter_records_why_nothing_is_left() -> None:
    f = build("label-selector-filter", {"matchLabels": {"role": "encode"}})
    state = make_state()
    assert f.filter(state, make_request(), POOL) == []
    assert "label selector" in state.read(EMPTY_REASON)


def test_alias_logs_deprecation(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        build("by-label-selector", {})
    assert "deprecated" in caplog.text


@pytest.mark.parametrize(
    ("params", "field"),
    [
        (
            expr("role", "In", []),
            "matchExpressions",
        ),
        (expr("role", "Gt", ["1"]), "operator"),
        ({"matchLabels": ["role"]}, "matchLabels"),
        ({"selector": {}}, "selector"),
    ],
)
def test_selector_filter_rejects_bad_parameters(params: dict[str, Any], field: str) -> None:
    with pytest.raises(PluginValidationError, match=f"label-selector-filter.*{field}"):
        build("label-selector-filter", params)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"label": "role", "validValues": ["decode"]}, ["d1", "d2"]),
        ({"label": "role", "validValues": ["decode", "prefill"]}, ["p0", "d1", "d2"]),
        ({"label": "role", "validValues": ["decode"], "allowsNoLabel": True}, ["d1", "d2", "u3"]),
        ({"label": "role", "allowsNoLabel": True}, ["u3"]),
        ({"label": "role", "validValues": [""]}, ["u3"]),  # absent compares as ""
    ],
)
def test_by_label(params: dict[str, Any], expected: list[str]) -> None:
    assert run(build("by-label", params)) == expected


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"validValues": ["a"]}, "label"),
        ({"label": "", "validValues": ["a"]}, "label"),
        ({"label": "role"}, "validValues"),
        ({"label": "role", "validValues": "decode"}, "validValues"),
        ({"label": "role", "validValues": ["a"], "allowNoLabel": True}, "allowNoLabel"),
    ],
)
def test_by_label_rejects_bad_parameters(params: dict[str, Any], field: str) -> None:
    with pytest.raises(PluginValidationError, match=f"by-label.*{field}"):
        build("by-label", params)


def test_selector_filters_split_a_pd_pool_in_a_real_config() -> None:
    config = parse_epp_config(
        """
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- {type: label-selector-filter, name: decode-pods,
   parameters: {matchExpressions: [{key: role, operator: In, values: [decode]}]}}
- {type: by-label, name: h100, parameters: {label: gpu, validValues: [h100]}}
- {type: max-score-picker}
schedulingProfiles:
- name: default
  plugins: [{pluginRef: decode-pods}, {pluginRef: h100}, {pluginRef: max-score-picker}]
"""
    )
    setup = build_scheduling(config, REGISTRY, rng=random.Random(0), clock=lambda: NOW)
    result = setup.scheduler.schedule(make_request(), POOL)
    assert result.primary is not None
    assert names(result.primary.targets) == ["d1"]
