"""endpoint-attribute-filter: threshold on a numeric endpoint attribute."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType
from typing import Any

import pytest

from kvroute.datastore.endpoint import Endpoint
from kvroute.errors import PluginValidationError
from kvroute.plugins.registry import PluginContext, default_registry
from kvroute.scheduling.interfaces import EMPTY_REASON
from kvroute.scheduling.plugins.filters.endpoint_attribute import EndpointAttributeFilter
from tests.fakes import make_endpoint, make_request, make_state, names

TYPE = "endpoint-attribute-filter"


def ep(name: str, **attributes: object) -> Endpoint:
    return replace(make_endpoint(name), attributes=MappingProxyType(dict(attributes)))


def build(**params: Any) -> EndpointAttributeFilter:
    raw: dict[str, Any] = {
        "attribute": "GPUUtilization",
        "producer": "dcgm-extractor",
        "algorithm": {"type": "threshold", "threshold": {"operator": "LessThan", "value": 0.8}},
    }
    raw.update(params)
    plugin = default_registry(include_entry_points=False).create(TYPE, "f", raw, PluginContext())
    assert isinstance(plugin, EndpointAttributeFilter)
    return plugin


POOL = [
    ep("e0", GPUUtilization=0.2),
    ep("e1", GPUUtilization=0.8),
    ep("e2", GPUUtilization=0.95),
    ep("e3"),  # no attribute
    ep("e4", GPUUtilization="busy"),  # not a number: treated as missing
]


@pytest.mark.parametrize(
    ("op", "value", "expected"),
    [
        ("LessThan", 0.8, ["e0", "e3", "e4"]),
        ("LessThanOrEqual", 0.8, ["e0", "e1", "e3", "e4"]),
        ("GreaterThan", 0.8, ["e2", "e3", "e4"]),
        ("GreaterThanOrEqual", 0.8, ["e1", "e2", "e3", "e4"]),
        ("Equal", 0.8, ["e1", "e3", "e4"]),
        ("NotEqual", 0.8, ["e0", "e2", "e3", "e4"]),
    ],
)
def test_operators_with_missing_passing(op: str, value: float, expected: list[str]) -> None:
    f = build(algorithm={"type": "threshold", "threshold": {"operator": op, "value": value}})
    assert f.pass_on_missing  # onMissing defaults to Pass
    assert names(f.filter(make_state(), make_request(), POOL)) == expected


def test_on_missing_fail_drops_endpoints_without_the_attribute() -> None:
    f = build(onMissing="Fail")
    assert names(f.filter(make_state(), make_request(), POOL)) == ["e0"]


def test_empty_result_without_fallback_records_the_reason() -> None:
    f = build(onMissing="Fail")
    state = make_state()
    assert f.filter(state, make_request(), [POOL[1], POOL[2]]) == []
    assert "GPUUtilization LessThan 0.8" in state.read(EMPTY_REASON)


def test_fallback_on_empty_returns_all_candidates() -> None:
    f = build(onMissing="Fail", fallbackOnEmpty=True)
    assert names(f.filter(make_state(), make_request(), POOL[1:3])) == ["e1", "e2"]
    # when something passes, the fallback does not apply
    assert names(f.filter(make_state(), make_request(), POOL[:3])) == ["e0"]


def test_integer_attribute_values_compare() -> None:
    f = build(
        attribute="queue",
        producer="",
        algorithm={
            "type": "threshold",
            "threshold": {"operator": "GreaterThanOrEqual", "value": 3},
        },
    )
    assert names(f.filter(make_state(), make_request(), [ep("a", queue=2), ep("b", queue=3)])) == [
        "b"
    ]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"attribute": ""}, "parameters.attribute"),
        ({"onMissing": "Maybe"}, "parameters.onMissing"),
        ({"algorithm": {"type": "percentile"}}, "parameters.algorithm.type"),
        ({"algorithm": {"type": "threshold"}}, "threshold is required"),
        (
            {"algorithm": {"type": "threshold", "threshold": {"operator": "Lt", "value": 1}}},
            "parameters.algorithm.threshold.operator",
        ),
        (
            {"algorithm": {"type": "threshold", "threshold": {"operator": "LessThan"}}},
            "parameters.algorithm.threshold.value",
        ),
        ({"threshold": 3}, "parameters.threshold"),
    ],
)
def test_bad_parameters_name_the_field(params: dict[str, Any], field: str) -> None:
    with pytest.raises(PluginValidationError) as err:
        build(**params)
    assert field in str(err.value)
    assert f"plugin 'f' ({TYPE})" in str(err.value)


def test_combined_attribute_producer_spelling_rejected() -> None:
    raw = {
        "attribute": "GPUUtilization/dcgm-extractor",
        "algorithm": {"type": "threshold", "threshold": {"operator": "LessThan", "value": 1}},
    }
    with pytest.raises(PluginValidationError, match="producer: 'dcgm-extractor'"):
        default_registry(include_entry_points=False).create(TYPE, "f", raw, PluginContext())


def test_slash_in_attribute_is_fine_with_an_explicit_producer() -> None:
    f = build(attribute="llm-d.ai/multicluster-queue-size", producer="")
    assert f.key == "llm-d.ai/multicluster-queue-size"
