"""``endpoint-attribute-scorer`` (Distribution): rank endpoints by a numeric attribute.

Parameters (upstream's names): ``attributeKey`` (required), ``producer`` (as for the
``endpoint-attribute-filter``: validated, see :mod:`kvroute.framework.attributes`), and
``algorithm{type, normalization}``:

* ``type`` (required): ``linear_lower_is_better`` or ``linear_higher_is_better``;
* ``normalization``: ``adaptiveRange: {}`` (the default: min..max over the candidates that have
  the attribute; all equal scores 1) or ``fixedRange: {min, max}`` (``min < max``; values
  clamped into the range); at most one of the two.

Score: ``(value - min) / (max - min)``, flipped (``1 - x``) when lower is better. An endpoint
without the attribute scores 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import Field, model_validator

from kvroute.datastore.endpoint import Endpoint
from kvroute.errors import PluginValidationError
from kvroute.framework.attributes import attribute_key, scalar_attribute
from kvroute.plugins.base import TypedName
from kvroute.plugins.registry import PluginFactory, PluginHandle
from kvroute.scheduling.interfaces import CycleState, Scorer, ScorerCategory
from kvroute.scheduling.plugins.params import PluginParams, parse_params
from kvroute.scheduling.request import InferenceRequest

TYPE = "endpoint-attribute-scorer"


class FixedRangeParams(PluginParams):
    min: float = 0.0
    max: float = 0.0

    @model_validator(mode="after")
    def _ordered(self) -> FixedRangeParams:
        if self.min >= self.max:
            raise ValueError(f"requires min < max, got min {self.min:g}, max {self.max:g}")
        return self


class AdaptiveRangeParams(PluginParams):
    pass


class NormalizationParams(PluginParams):
    fixed_range: FixedRangeParams | None = Field(None, alias="fixedRange")
    adaptive_range: AdaptiveRangeParams | None = Field(None, alias="adaptiveRange")

    @model_validator(mode="after")
    def _at_most_one(self) -> NormalizationParams:
        if self.fixed_range is not None and self.adaptive_range is not None:
            raise ValueError("at most one of fixedRange and adaptiveRange, got both")
        return self


class AlgorithmParams(PluginParams):
    type: Literal["linear_lower_is_better", "linear_higher_is_better"]
    normalization: NormalizationParams = NormalizationParams()


class EndpointAttributeScorerParams(PluginParams):
    attribute_key: str = Field(min_length=1, alias="attributeKey")
    producer: str | None = None
    algorithm: AlgorithmParams


class EndpointAttributeScorer:
    category = ScorerCategory.DISTRIBUTION

    def __init__(
        self,
        name: str,
        key: str,
        *,
        lower_is_better: bool,
        fixed_range: tuple[float, float] | None = None,
    ) -> None:
        self.typed_name = TypedName(TYPE, name)
        self.key = key
        self.lower_is_better = lower_is_better
        self.fixed_range = fixed_range

    def score(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        values = {e.name: scalar_attribute(e, self.key) for e in endpoints}
        present = [v for v in values.values() if v is not None]
        low, high = 0.0, 0.0
        if self.fixed_range is not None:
            low, high = self.fixed_range
        elif present:
            low, high = min(present), max(present)
        scores: dict[str, float] = {}
        for name, value in values.items():
            if value is None:
                scores[name] = 0.0
            elif self.fixed_range is None and high == low:
                scores[name] = 1.0
            else:
                x = min(1.0, max(0.0, (value - low) / (high - low)))
                scores[name] = 1.0 - x if self.lower_is_better else x
        return scores


def _factory(
    name: str, parameters: Mapping[str, Any], handle: PluginHandle
) -> EndpointAttributeScorer:
    params = parse_params(EndpointAttributeScorerParams, name, TYPE, parameters)
    try:
        key = attribute_key(params.attribute_key, params.producer)
    except ValueError as exc:
        raise PluginValidationError(
            f"plugin {name!r} ({TYPE}): parameters.attributeKey: {exc}"
        ) from None
    fixed = params.algorithm.normalization.fixed_range
    return EndpointAttributeScorer(
        name,
        key,
        lower_is_better=params.algorithm.type == "linear_lower_is_better",
        fixed_range=(fixed.min, fixed.max) if fixed is not None else None,
    )


PLUGINS: Mapping[str, PluginFactory] = {TYPE: _factory}

_: type[Scorer] = EndpointAttributeScorer
