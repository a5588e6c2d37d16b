"""endpoint-attribute-scorer: linear normalisation of a numeric endpoint attribute."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType
from typing import Any

import pytest

from kvroute.datastore.endpoint import Endpoint
from kvroute.errors import PluginValidationError
from kvroute.plugins.registry import PluginContext, default_registry
from kvroute.scheduling.interfaces import ScorerCategory
from kvroute.scheduling.plugins.scorers.endpoint_attribute import EndpointAttributeScorer
from tests.fakes import make_endpoint, make_request, make_state

TYPE = "endpoint-attribute-scorer"


def ep(name: str, **attributes: object) -> Endpoint:
    return replace(make_endpoint(name), attributes=MappingProxyType(dict(attributes)))


def build(algorithm: dict[str, Any], **params: Any) -> EndpointAttributeScorer:
    raw: dict[str, Any] = {
        "attributeKey": "GPUUtilization",
        "producer": "dcgm-extractor",
        "algorithm": algorithm,
    }
    raw.update(params)
    plugin = default_registry(include_entry_points=False).create(TYPE, "s", raw, PluginContext())
    assert isinstance(plugin, EndpointAttributeScorer)
    return plugin


POOL = [
    ep("a", GPUUtilization=0.2),
    ep("b", GPUUtilization=0.4),
    ep("c", GPUUtilization=0.6),
    ep("d"),
]


def score(s: EndpointAttributeScorer, pool: list[Endpoint]) -> dict[str, float]:
    return {k: round(v, 6) for k, v in s.score(make_state(), make_request(), pool).items()}


def test_adaptive_range_is_the_default_lower_is_better() -> None:
    s = build({"type": "linear_lower_is_better"})
    assert s.category is ScorerCategory.DISTRIBUTION
    assert score(s, POOL) == {"a": 1.0, "b": 0.5, "c": 0.0, "d": 0.0}


def test_adaptive_range_higher_is_better() -> None:
    s = build({"type": "linear_higher_is_better", "normalization": {"adaptiveRange": {}}})
    assert score(s, POOL) == {"a": 0.0, "b": 0.5, "c": 1.0, "d": 0.0}


def test_adaptive_range_all_equal_scores_one_missing_zero() -> None:
    s = build({"type": "linear_lower_is_better"})
    pool = [ep("a", GPUUtilization=0.3), ep("b", GPUUtilization=0.3), ep("c")]
    assert score(s, pool) == {"a": 1.0, "b": 1.0, "c": 0.0}
    assert score(s, [ep("x"), ep("y")]) == {"x": 0.0, "y": 0.0}


def test_fixed_range_clamps() -> None:
    s = build(
        {"type": "linear_lower_is_better", "normalization": {"fixedRange": {"min": 0, "max": 1}}}
    )
    pool = [
        ep("a", GPUUtilization=0.25),
        ep("b", GPUUtilization=1.5),
        ep("c", GPUUtilization=-1),
        ep("d"),
    ]
    assert score(s, pool) == {"a": 0.75, "b": 0.0, "c": 1.0, "d": 0.0}
    h = build(
        {"type": "linear_higher_is_better", "normalization": {"fixedRange": {"min": 10, "max": 20}}}
    )
    assert score(h, [ep("a", GPUUtilization=15), ep("b", GPUUtilization=30)]) == {
        "a": 0.5,
        "b": 1.0,
    }


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"attributeKey": "", "algorithm": {"type": "linear_lower_is_better"}}, "attributeKey"),
        ({"algorithm": {}}, "parameters.algorithm.type"),
        ({"algorithm": {"type": "log"}}, "parameters.algorithm.type"),
        (
            {
                "algorithm": {
                    "type": "linear_lower_is_better",
                    "normalization": {"fixedRange": {"min": 1, "max": 1}},
                }
            },
            "min < max",
        ),
        (
            {
                "algorithm": {
                    "type": "linear_lower_is_better",
                    "normalization": {"fixedRange": {"min": 0, "max": 1}, "adaptiveRange": {}},
                }
            },
            "at most one",
        ),
        (
            {"algorithm": {"type": "linear_lower_is_better", "normalization": {"zscore": {}}}},
            "parameters.algorithm.normalization.zscore",
        ),
        (
            {"attribute": "x", "algorithm": {"type": "linear_lower_is_better"}},
            "parameters.attribute",
        ),
    ],
)
def test_bad_parameters_name_the_field(raw: dict[str, Any], field: str) -> None:
    params = {"attributeKey": "GPUUtilization", **raw}
    with pytest.raises(PluginValidationError) as err:
        default_registry(include_entry_points=False).create(TYPE, "s", params, PluginContext())
    assert field in str(err.value)


def test_combined_attribute_producer_spelling_rejected() -> None:
    with pytest.raises(PluginValidationError, match="producer: 'dcgm-extractor'"):
        default_registry(include_entry_points=False).create(
            TYPE,
            "s",
            {
                "attributeKey": "GPUUtilization/dcgm-extractor",
                "algorithm": {"type": "linear_lower_is_better"},
            },
            PluginContext(),
        )
