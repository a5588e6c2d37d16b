"""Label filters: ``label-selector-filter`` (alias ``by-label-selector``) and ``by-label``.

* ``label-selector-filter``: keeps the endpoints whose labels match a Kubernetes label
  selector: ``matchLabels`` (every pair must match) and ``matchExpressions`` (``key``,
  ``operator`` ``In``/``NotIn``/``Exists``/``DoesNotExist``, ``values``), all ANDed
  (:mod:`kvroute.api.labels`). No parameters: an empty selector, which keeps every endpoint.
  ``by-label-selector`` is upstream's deprecated name of the same filter; it keeps that type
  name and logs a deprecation warning when built.
* ``by-label`` (deprecated upstream, removal planned for v0.11): keeps the endpoints whose
  label ``label`` has one of ``validValues``; with ``allowsNoLabel`` (false) endpoints without
  the label are kept too. ``label`` is required, and ``validValues`` must be non-empty unless
  ``allowsNoLabel`` is true. An endpoint without the label is compared as the empty value, as
  upstream does (so ``validValues: [""]`` keeps it).

When nothing is left, the filter says why (the profile's failure reason).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import Field, model_validator

from kvroute.api.labels import LabelSelector, Selector
from kvroute.datastore.endpoint import Endpoint
from kvroute.plugins.base import TypedName, validate_parameters
from kvroute.plugins.registry import PluginFactory, PluginHandle
from kvroute.scheduling.interfaces import EMPTY_REASON, CycleState, Filter
from kvroute.scheduling.plugins.params import PluginParams, parse_params
from kvroute.scheduling.request import InferenceRequest

log = logging.getLogger(__name__)

LABEL_SELECTOR_FILTER = "label-selector-filter"
BY_LABEL_SELECTOR = "by-label-selector"  # deprecated alias
BY_LABEL = "by-label"  # deprecated


class LabelSelectorFilter:
    """Keeps the endpoints whose labels match the selector."""

    def __init__(self, name: str, selector: Selector, type_name: str = LABEL_SELECTOR_FILTER):
        self.typed_name = TypedName(type_name, name)
        self.selector = selector

    def filter(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Sequence[Endpoint]:
        kept = [e for e in endpoints if self.selector.matches(e.labels)]
        if not kept and endpoints:
            state.write(
                EMPTY_REASON, f"no endpoint matches the label selector of {self.typed_name}"
            )
        return kept


class ByLabelParams(PluginParams):
    label: str = Field(min_length=1)
    valid_values: tuple[str, ...] = Field((), alias="validValues")
    allows_no_label: bool = Field(False, alias="allowsNoLabel")

    @model_validator(mode="after")
    def _something_passes(self) -> ByLabelParams:
        if not self.valid_values and not self.allows_no_label:
            raise ValueError("either 'validValues' must be non-empty or 'allowsNoLabel' true")
        return self


class ByLabelFilter:
    """Keeps the endpoints whose ``label`` has a valid value (or, optionally, no value)."""

    def __init__(self, name: str, params: ByLabelParams) -> None:
        self.typed_name = TypedName(BY_LABEL, name)
        self.label = params.label
        self.valid_values = frozenset(params.valid_values)
        self.allows_no_label = params.allows_no_label

    def filter(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Sequence[Endpoint]:
        kept = []
        for e in endpoints:
            value = e.labels.get(self.label)
            if (value is None and self.allows_no_label) or (value or "") in self.valid_values:
                kept.append(e)
        if not kept and endpoints:
            state.write(
                EMPTY_REASON, f"no endpoint has {self.label} in {sorted(self.valid_values)}"
            )
        return kept


def _selector_factory(type_name: str) -> PluginFactory:
    def factory(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> Any:
        if type_name == BY_LABEL_SELECTOR:
            log.warning(
                "plugin %r: type %r is deprecated, use %r",
                name,
                BY_LABEL_SELECTOR,
                LABEL_SELECTOR_FILTER,
            )
        selector = validate_parameters(LabelSelector, name, type_name, parameters).selector()
        return LabelSelectorFilter(name, selector, type_name)

    return factory


def _by_label(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> Any:
    log.warning(
        "plugin %r: type %r is deprecated, use %r for label filtering or "
        "decode-filter/prefill-filter/encode-filter for roles",
        name,
        BY_LABEL,
        LABEL_SELECTOR_FILTER,
    )
    return ByLabelFilter(name, parse_params(ByLabelParams, name, BY_LABEL, parameters))


PLUGINS: Mapping[str, PluginFactory] = {
    LABEL_SELECTOR_FILTER: _selector_factory(LABEL_SELECTOR_FILTER),
    BY_LABEL_SELECTOR: _selector_factory(BY_LABEL_SELECTOR),
    BY_LABEL: _by_label,
}

_: type[Filter] = LabelSelectorFilter
__: type[Filter] = ByLabelFilter
