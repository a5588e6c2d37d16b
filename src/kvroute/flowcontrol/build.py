"""The ``flowControl`` config section -> :class:`FlowControlSettings` + saturation detector.

Policy refs name plugins declared under ``plugins`` (already built by the scheduling builder and
passed in as ``plugins``) or, undeclared, a built-in policy type (created with default
parameters). Each ref is checked to be the right kind, with an error naming the key.

Defaults are upstream's (``fcfs-ordering-policy``, ``static-usage-limit-policy``, TTL 60 s, 5000
requests / 1 GB per band) except fairness: pure least attained service
(:func:`~kvroute.flowcontrol.policies.default_fairness`) rather than upstream's
``global-strict-fairness-policy``, which serves flows in global arrival order and so gives a tenant
sending 10x as much 5.6x its fair share (``docs/benchmarks.md``, flow control, noisy neighbour).
With one flow per band the two are the same. One default instance serves every band that names
no policy (a tenant's service is counted across them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from kvroute.config.flow_control import BandSpec, FlowControlSpec
from kvroute.errors import ConfigError
from kvroute.flowcontrol.policies import (
    FCFS,
    STATIC_USAGE_LIMIT,
    FairnessPolicy,
    OrderingPolicy,
    UsageLimitPolicy,
    default_fairness,
    is_fairness,
    is_ordering,
    is_usage_limit,
)
from kvroute.flowcontrol.queues import BandSettings, FlowControlSettings
from kvroute.plugins.registry import PluginContext, PluginRegistry
from kvroute.scheduling.interfaces import SaturationDetector

DEFAULT_MAX_REQUESTS = 5000
DEFAULT_MAX_BYTES = 1_000_000_000
DEFAULT_TTL_S = 60.0


@dataclass(frozen=True, slots=True)
class FlowControlSetup:
    settings: FlowControlSettings
    detector: SaturationDetector | None  # None: use the scheduling config's detector


class _Resolver:
    def __init__(self, plugins: Mapping[str, Any], registry: PluginRegistry, source: str):
        self._plugins = plugins
        self._registry = registry
        self._source = source
        self._created: dict[str, Any] = {}

    def get(self, path: str, ref: str, kind: str, check: Any) -> Any:
        plugin = self._plugins.get(ref) or self._created.get(ref)
        if plugin is None:
            if ref not in self._registry:
                raise ConfigError(f"{self._source}: {path}: no plugin named {ref!r}")
            plugin = self._registry.create(ref, ref, {}, PluginContext(plugins=dict(self._plugins)))
            self._created[ref] = plugin
        if not check(plugin):
            raise ConfigError(
                f"{self._source}: {path}: plugin {ref!r} ({plugin.typed_name.type}) is not a {kind}"
            )
        return plugin


def build_flow_control(
    spec: FlowControlSpec | None,
    plugins: Mapping[str, Any],
    registry: PluginRegistry,
    source: str = "<config>",
) -> FlowControlSetup | None:
    """``None`` when flow control is switched off (``flowControl: {enabled: false}``)."""
    spec = spec or FlowControlSpec()
    if not spec.enabled:
        return None
    r = _Resolver(plugins, registry, source)

    def band(path: str, b: BandSpec | None, base: BandSettings | None) -> BandSettings:
        b = b or BandSpec()
        ordering = (
            r.get(
                f"{path}.orderingPolicyRef", b.ordering_policy_ref, "ordering policy", is_ordering
            )
            if b.ordering_policy_ref
            else (base.ordering if base else r.get(path, FCFS, "ordering policy", is_ordering))
        )
        fairness = (
            r.get(
                f"{path}.fairnessPolicyRef", b.fairness_policy_ref, "fairness policy", is_fairness
            )
            if b.fairness_policy_ref
            else (base.fairness if base else default_fairness())
        )
        return BandSettings(
            max_requests=b.max_requests or (base.max_requests if base else DEFAULT_MAX_REQUESTS),
            max_bytes=b.max_bytes or (base.max_bytes if base else DEFAULT_MAX_BYTES),
            ordering=cast(OrderingPolicy, ordering),
            fairness=cast(FairnessPolicy, fairness),
        )

    default = band("flowControl.defaultPriorityBand", spec.default_priority_band, None)
    negative = (
        band(
            "flowControl.defaultNegativePriorityBand", spec.default_negative_priority_band, default
        )
        if spec.default_negative_priority_band is not None
        else None
    )
    bands = {
        b.priority: band(f"flowControl.priorityBands[{i}]", b, default)
        for i, b in enumerate(spec.priority_bands)
    }
    limit_ref = spec.usage_limit_policy_plugin_ref or STATIC_USAGE_LIMIT
    limit = r.get(
        "flowControl.usageLimitPolicyPluginRef", limit_ref, "usage limit policy", is_usage_limit
    )
    note = getattr(limit, "note_priorities", None)
    if callable(note):  # a rank-based policy (soft-reflective-ceiling) learns the config's bands
        note(bands)
    detector = None
    if spec.saturation_detector is not None:
        detector = r.get(
            "flowControl.saturationDetector.pluginRef",
            spec.saturation_detector.plugin_ref,
            "saturation detector",
            lambda p: callable(getattr(p, "saturation", None)),
        )
    ttl = DEFAULT_TTL_S if spec.default_request_ttl is None else spec.default_request_ttl
    no_ep = ttl if spec.no_endpoint_request_ttl is None else spec.no_endpoint_request_ttl
    settings = FlowControlSettings(
        default_band=default,
        default_negative_band=negative,
        bands=bands,
        max_bytes=spec.max_bytes,
        max_requests=spec.max_requests,
        request_ttl=ttl,
        no_endpoint_ttl=no_ep,
        usage_limit=cast(UsageLimitPolicy, limit),
    )
    return FlowControlSetup(settings, cast(SaturationDetector | None, detector))
