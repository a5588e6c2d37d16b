"""``endpoint-attribute-filter``: keep endpoints whose numeric attribute passes a threshold.

Parameters (upstream's names and defaults):

* ``attribute`` (required): the endpoint attribute, e.g. ``GPUUtilization``;
* ``producer``: the plugin publishing it (e.g. ``dcgm-extractor``). Omitted means the core
  metrics extractor's custom metrics, which kvroute does not publish, so an omitted producer
  only finds attributes other extractors wrote under that name; an ``attribute`` containing
  ``/`` needs an explicit ``producer`` (see :mod:`kvroute.framework.attributes`);
* ``onMissing``: ``Pass`` (default: keep an endpoint without the attribute) or ``Fail``;
* ``fallbackOnEmpty`` (false): when nothing passes, return the unfiltered candidates;
* ``algorithm``: ``{type: threshold, threshold: {operator, value}}``; ``operator`` is one of
  ``LessThan``, ``LessThanOrEqual``, ``GreaterThan``, ``GreaterThanOrEqual``, ``Equal``,
  ``NotEqual``, compared as ``attribute <operator> value``. ``threshold`` is the only algorithm.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from pydantic import Field, model_validator

from kvroute.datastore.endpoint import Endpoint
from kvroute.errors import PluginValidationError
from kvroute.framework.attributes import attribute_key, scalar_attribute
from kvroute.plugins.base import TypedName
from kvroute.plugins.registry import PluginFactory, PluginHandle
from kvroute.scheduling.interfaces import EMPTY_REASON, CycleState, Filter
from kvroute.scheduling.plugins.params import PluginParams, parse_params
from kvroute.scheduling.request import InferenceRequest

TYPE = "endpoint-attribute-filter"

Operator = Literal[
    "LessThan", "LessThanOrEqual", "GreaterThan", "GreaterThanOrEqual", "Equal", "NotEqual"
]
OPERATORS: Mapping[str, Callable[[float, float], bool]] = {
    "LessThan": operator.lt,
    "LessThanOrEqual": operator.le,
    "GreaterThan": operator.gt,
    "GreaterThanOrEqual": operator.ge,
    "Equal": operator.eq,
    "NotEqual": operator.ne,
}


class ThresholdParams(PluginParams):
    operator: Operator
    value: float


class AlgorithmParams(PluginParams):
    type: Literal["threshold"]
    threshold: ThresholdParams | None = None

    @model_validator(mode="after")
    def _needs_threshold(self) -> AlgorithmParams:
        if self.threshold is None:
            raise ValueError("threshold is required when type is 'threshold'")
        return self


class EndpointAttributeFilterParams(PluginParams):
    attribute: str = Field(min_length=1)
    producer: str | None = None
    on_missing: Literal["Pass", "Fail"] = Field("Pass", alias="onMissing")
    fallback_on_empty: bool = Field(False, alias="fallbackOnEmpty")
    algorithm: AlgorithmParams


class EndpointAttributeFilter:
    """Keeps the candidates whose attribute compares true against the threshold."""

    def __init__(self, name: str, params: EndpointAttributeFilterParams, key: str) -> None:
        self.typed_name = TypedName(TYPE, name)
        self.key = key
        self.pass_on_missing = params.on_missing == "Pass"
        self.fallback_on_empty = params.fallback_on_empty
        threshold = params.algorithm.threshold
        assert threshold is not None  # enforced by AlgorithmParams
        self.operator = threshold.operator
        self.value = threshold.value
        self._compare = OPERATORS[threshold.operator]

    def filter(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Sequence[Endpoint]:
        kept: list[Endpoint] = []
        for endpoint in endpoints:
            value = scalar_attribute(endpoint, self.key)
            if value is None:
                if self.pass_on_missing:
                    kept.append(endpoint)
            elif self._compare(value, self.value):
                kept.append(endpoint)
        if kept or not endpoints:
            return kept
        if self.fallback_on_empty:
            return list(endpoints)
        state.write(EMPTY_REASON, f"no endpoint has {self.key} {self.operator} {self.value:g}")
        return kept


def _factory(
    name: str, parameters: Mapping[str, Any], handle: PluginHandle
) -> EndpointAttributeFilter:
    params = parse_params(EndpointAttributeFilterParams, name, TYPE, parameters)
    try:
        key = attribute_key(params.attribute, params.producer)
    except ValueError as exc:
        raise PluginValidationError(
            f"plugin {name!r} ({TYPE}): parameters.attribute: {exc}"
        ) from None
    return EndpointAttributeFilter(name, params, key)


PLUGINS: Mapping[str, PluginFactory] = {TYPE: _factory}

_: type[Filter] = EndpointAttributeFilter
