"""The ``flowControl`` section of an EndpointPickerConfig (upstream v1alpha1 ``FlowControlConfig``).

::

    flowControl:
      enabled: true                  # kvroute: flow control is ON by default; false = legacy 429s
      maxBytes: 8Gi                  # global; unset = unlimited
      maxRequests: 10000             # global; unset = unlimited
      defaultRequestTTL: 60s         # "0s" = no TTL (wait until the client goes away)
      noEndpointRequestTTL: 60s      # while the pool has no endpoints; default = defaultRequestTTL
      saturationDetector: {pluginRef: utilization-detector}
      usageLimitPolicyPluginRef: static-usage-limit-policy
      enableEviction: false          # in-flight eviction is not implemented: true is rejected
      defaultPriorityBand: {maxRequests: 5000, maxBytes: 1G,
                            orderingPolicyRef: fcfs-ordering-policy,
                            fairnessPolicyRef: global-strict-fairness-policy}
                                     # unset: program-aware least attained service (kvroute)
      defaultNegativePriorityBand: {maxRequests: 100}
      priorityBands: [{priority: 100, orderingPolicyRef: slo-deadline-ordering-policy}]

Quantities are Kubernetes quantities (``1G`` = 10^9, ``1Gi`` = 2^30) or integers; string
``maxRequests`` (upstream's sample quotes it) are accepted. Upstream treats a band limit of 0 as
"use the default"; kvroute rejects it at load naming the key, since a band that can hold nothing
is almost certainly a mistake (issue 12).
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kvroute.config.duration import parse_go_duration

_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
_UNITS = {
    None: 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


def parse_quantity(value: int | str) -> int:
    """Bytes (or a count) from a Kubernetes quantity such as ``1G``, ``8Gi``, ``"5000"``."""
    if isinstance(value, bool):
        raise ValueError("expected a quantity such as 1G or 5000")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    m = _QUANTITY.match(value.strip())
    if m is None:
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 10Gi, 500M, 1000)")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _positive_quantity(value: int | str | None) -> int | None:
    if value is None:
        return None
    n = parse_quantity(value)
    if n == 0:
        raise ValueError("must be greater than 0 (omit the key for the default)")
    return n


def _duration(value: Any) -> float | None:
    if value is None:
        return None
    return parse_go_duration(value)


class FlowPluginRef(_Strict):
    plugin_ref: str = Field(alias="pluginRef", min_length=1)


class BandSpec(_Strict):
    max_bytes: int | None = Field(default=None, alias="maxBytes")
    max_requests: int | None = Field(default=None, alias="maxRequests")
    ordering_policy_ref: str | None = Field(default=None, alias="orderingPolicyRef")
    fairness_policy_ref: str | None = Field(default=None, alias="fairnessPolicyRef")

    _limits = field_validator("max_bytes", "max_requests", mode="before")(_positive_quantity)


class PriorityBandSpec(BandSpec):
    priority: int


class FlowControlSpec(_Strict):
    enabled: bool = True
    max_bytes: int | None = Field(default=None, alias="maxBytes")
    max_requests: int | None = Field(default=None, alias="maxRequests")
    default_request_ttl: float | None = Field(default=None, alias="defaultRequestTTL")
    no_endpoint_request_ttl: float | None = Field(default=None, alias="noEndpointRequestTTL")
    saturation_detector: FlowPluginRef | None = Field(default=None, alias="saturationDetector")
    usage_limit_policy_plugin_ref: str | None = Field(
        default=None, alias="usageLimitPolicyPluginRef"
    )
    enable_eviction: bool = Field(default=False, alias="enableEviction")
    default_priority_band: BandSpec | None = Field(default=None, alias="defaultPriorityBand")
    default_negative_priority_band: BandSpec | None = Field(
        default=None, alias="defaultNegativePriorityBand"
    )
    priority_bands: list[PriorityBandSpec] = Field(default_factory=list, alias="priorityBands")

    _limits = field_validator("max_bytes", "max_requests", mode="before")(_positive_quantity)
    _ttls = field_validator("default_request_ttl", "no_endpoint_request_ttl", mode="before")(
        _duration
    )

    @field_validator("enable_eviction")
    @classmethod
    def _eviction(cls, value: bool) -> bool:
        if value:
            raise ValueError(
                "in-flight eviction is not implemented in kvroute; remove the key or set it to "
                "false (queued requests still yield by priority)"
            )
        return value

    @field_validator("priority_bands")
    @classmethod
    def _unique(cls, bands: list[PriorityBandSpec]) -> list[PriorityBandSpec]:
        seen: set[int] = set()
        for b in bands:
            if b.priority in seen:
                raise ValueError(f"priority {b.priority} is listed twice")
            seen.add(b.priority)
        return bands

    def plugin_refs(self) -> list[tuple[str, str]]:
        """``(key path, plugin name)`` of every plugin the section references."""
        refs: list[tuple[str, str]] = []
        if self.saturation_detector is not None:
            refs.append(
                ("flowControl.saturationDetector.pluginRef", self.saturation_detector.plugin_ref)
            )
        if self.usage_limit_policy_plugin_ref is not None:
            refs.append(
                ("flowControl.usageLimitPolicyPluginRef", self.usage_limit_policy_plugin_ref)
            )
        bands: list[tuple[str, BandSpec | None]] = [
            ("flowControl.defaultPriorityBand", self.default_priority_band),
            ("flowControl.defaultNegativePriorityBand", self.default_negative_priority_band),
        ]
        bands += [(f"flowControl.priorityBands[{i}]", b) for i, b in enumerate(self.priority_bands)]
        for path, band in bands:
            if band is None:
                continue
            if band.ordering_policy_ref is not None:
                refs.append((f"{path}.orderingPolicyRef", band.ordering_policy_ref))
            if band.fairness_policy_ref is not None:
                refs.append((f"{path}.fairnessPolicyRef", band.fairness_policy_ref))
        return refs


# Built-in flow-control policy types a ``flowControl`` ref may name without declaring them
# under ``plugins`` (the plugin is then created with default parameters, name == type).
FLOW_CONTROL_DEFAULT_TYPES = frozenset(
    {
        "fcfs-ordering-policy",
        "edf-ordering-policy",
        "slo-deadline-ordering-policy",
        "global-strict-fairness-policy",
        "round-robin-fairness-policy",
        "program-aware-fairness",
        "static-usage-limit-policy",
        "utilization-detector",
        "concurrency-detector",
    }
)
