"""header-label-affinity-scorer: 1 where the endpoint's label equals the request header."""

from __future__ import annotations

import dataclasses
import random
from types import MappingProxyType
from typing import Any

import pytest

from kvroute.config.epp_config import parse_epp_config
from kvroute.errors import PluginValidationError
from kvroute.plugins.registry import PluginContext, default_registry
from kvroute.scheduling.builder import build_scheduling
from kvroute.scheduling.interfaces import ScorerCategory
from kvroute.scheduling.plugins.scorers.header_label_affinity import HeaderLabelAffinityScorer
from kvroute.scheduling.request import InferenceRequest
from tests.fakes import NOW, make_endpoint, make_request, make_state, names

REGISTRY = default_registry(include_entry_points=False)
SLICE = "disaggregatedset.x-k8s.io/slice"
POOL = [
    make_endpoint("e0", labels={SLICE: "0"}),
    make_endpoint("e1", labels={SLICE: "1"}),
    make_endpoint("e2"),
]


def build(params: dict[str, Any]) -> HeaderLabelAffinityScorer:
    plugin = REGISTRY.create("header-label-affinity-scorer", "s", params, PluginContext())
    assert isinstance(plugin, HeaderLabelAffinityScorer)
    return plugin


def request(headers: dict[str, str]) -> InferenceRequest:
    return dataclasses.replace(make_request(), headers=MappingProxyType(headers))


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"x-disagg-slice": "1"}, {"e0": 0.0, "e1": 1.0, "e2": 0.0}),
        ({"x-disagg-slice": "0"}, {"e0": 1.0, "e1": 0.0, "e2": 0.0}),
        ({"x-disagg-slice": "7"}, {"e0": 0.0, "e1": 0.0, "e2": 0.0}),  # unknown value
        ({"x-disagg-slice": ""}, {"e0": 0.0, "e1": 0.0, "e2": 0.0}),
        ({}, {"e0": 0.0, "e1": 0.0, "e2": 0.0}),  # no header
    ],
)
def test_scores(headers: dict[str, str], expected: dict[str, float]) -> None:
    s = build({"headerName": "X-Disagg-Slice", "labelKey": SLICE})  # header name any case
    assert s.category is ScorerCategory.AFFINITY
    assert dict(s.score(make_state(), request(headers), POOL)) == expected


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"labelKey": SLICE}, "headerName"),
        ({"headerName": "x", "labelKey": ""}, "labelKey"),
        ({"headerName": "x", "labelKey": SLICE, "mode": "strict"}, "mode"),
    ],
)
def test_bad_parameters_are_named(params: dict[str, Any], field: str) -> None:
    with pytest.raises(PluginValidationError, match=field):
        build(params)


def test_weighted_in_a_profile_it_steers_to_the_named_slice() -> None:
    config = parse_epp_config(
        f"""
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- {{type: header-label-affinity-scorer, name: slice-affinity,
   parameters: {{headerName: x-disagg-slice, labelKey: {SLICE}}}}}
- {{type: queue-scorer}}
- {{type: max-score-picker}}
schedulingProfiles:
- name: decode
  plugins:
  - {{pluginRef: slice-affinity, weight: 3}}
  - {{pluginRef: queue-scorer, weight: 1}}
  - {{pluginRef: max-score-picker}}
"""
    )
    setup = build_scheduling(config, REGISTRY, rng=random.Random(0), clock=lambda: NOW)
    busy_slice_1 = [POOL[0], make_endpoint("e1", waiting=5, labels={SLICE: "1"}), POOL[2]]
    result = setup.scheduler.schedule(request({"x-disagg-slice": "1"}), busy_slice_1)
    assert result.primary is not None
    assert names(result.primary.targets) == ["e1"]  # weight 3 beats the queue scorer
