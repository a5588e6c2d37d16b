"""Plugin registry: type name -> factory, for the built-ins and ``kvroute.plugins`` entry points.

A factory receives the instance name, the raw ``parameters`` mapping from the
EndpointPickerConfig, and a :class:`PluginHandle`; it validates the parameters (each plugin has a
pydantic ``Params`` model) and raises :class:`~kvroute.errors.PluginValidationError` naming the
plugin and field when they are wrong. Validation therefore happens when the config loads, never
on the request path.

Built-in plugin modules each export ``PLUGINS: Mapping[str, PluginFactory]``; list new modules in
``BUILTIN_PLUGIN_MODULES``.
"""

from __future__ import annotations

import importlib
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Protocol

from kvroute.errors import PluginValidationError
from kvroute.plugins.base import Plugin

ENTRY_POINT_GROUP = "kvroute.plugins"

BUILTIN_PLUGIN_MODULES: tuple[str, ...] = (
    "kvroute.scheduling.plugins.scorers.queue",
    "kvroute.scheduling.plugins.scorers.load_aware",
    "kvroute.scheduling.plugins.scorers.running_requests",
    "kvroute.scheduling.plugins.scorers.kv_cache_utilization",
    "kvroute.scheduling.plugins.scorers.lora_affinity",
    "kvroute.scheduling.plugins.scorers.cost_aware",
    "kvroute.scheduling.plugins.pickers.max_score",
    "kvroute.scheduling.plugins.pickers.random_picker",
    "kvroute.scheduling.plugins.pickers.weighted_random",
    "kvroute.scheduling.plugins.profile_handlers.single_profile",
    "kvroute.scheduling.plugins.profile_handlers.disagg",
    "kvroute.scheduling.plugins.profile_handlers.deciders",
    "kvroute.scheduling.plugins.profile_handlers.data_parallel",
    "kvroute.scheduling.plugins.filters.roles",
    "kvroute.scheduling.plugins.filters.utilization_detector",
    "kvroute.scheduling.plugins.filters.decision_tree",
    "kvroute.scheduling.plugins.filters.header_based_testing",
    "kvroute.scheduling.plugins.prefix",
    "kvroute.scheduling.plugins.scorers.token_load",
    "kvroute.scheduling.plugins.scorers.active_request",
    "kvroute.scheduling.plugins.scorers.prefill_load",
    "kvroute.scheduling.plugins.scorers.session_affinity",
    "kvroute.scheduling.plugins.scorers.no_hit_lru",
    "kvroute.scheduling.plugins.scorers.mm_embeddings_cache",  # issue 14
    "kvroute.scheduling.plugins.scorers.context_length_aware",
    "kvroute.scheduling.plugins.latency",
    "kvroute.scheduling.plugins.filters.prefix_cache_affinity",
    "kvroute.datalayer.plugins",
    "kvroute.datalayer.notifications",  # issue 18: endpoint-notification-source
    # issue 18: endpoint attributes and the data sources that produce them
    "kvroute.scheduling.plugins.filters.endpoint_attribute",
    "kvroute.scheduling.plugins.scorers.endpoint_attribute",
    "kvroute.datalayer.dcgm",
    "kvroute.datalayer.models",
    # issue 18: the multicluster-* family (data layer, scorers, session-affinity filters)
    "kvroute.datalayer.multicluster",
    "kvroute.scheduling.plugins.scorers.multicluster",
    "kvroute.scheduling.plugins.filters.session_affinity",
    # flow control (issue 12): policies and the concurrency detector
    "kvroute.flowcontrol.policies",
    "kvroute.flowcontrol.concurrency",
    "kvroute.flowcontrol.soft_reflective_ceiling",
    # request control (issue 18): admitters and request-header processors
    "kvroute.requestcontrol.plugins.probabilistic_admitter",
    "kvroute.requestcontrol.plugins.agent_identity",
    "kvroute.requestcontrol.plugins.request_attribute_reporter",
    # issue 18: label and topology filters/scorers, the topology extractor, the rollout screener
    "kvroute.scheduling.plugins.filters.label_selector",
    "kvroute.scheduling.plugins.scorers.header_label_affinity",
    "kvroute.scheduling.plugins.filters.topology_affinity",
    "kvroute.scheduling.plugins.scorers.topology_affinity",
    "kvroute.datalayer.topology",
    "kvroute.requestcontrol.plugins.disaggregatedset_rollout",
)


class PluginHandle(Protocol):
    """What a factory may reach: other plugins by name (after all are built) and a clock."""

    def plugin(self, name: str) -> Plugin: ...

    def now(self) -> float: ...


class RandomSource(Protocol):
    """Optional extension of :class:`PluginHandle`: the seeded RNG a plugin should draw from.

    Factories that need randomness (pickers, the decision tree) use :func:`handle_rng`, which
    returns the handle's RNG when it offers one and a fresh ``random.Random`` otherwise, so a
    handle written before this existed keeps working.
    """

    def rng(self) -> random.Random: ...


def handle_rng(handle: PluginHandle) -> random.Random:
    """The RNG a plugin built through ``handle`` should use (seeded in tests and dry runs)."""
    get = getattr(handle, "rng", None)
    if callable(get):
        rng = get()
        if isinstance(rng, random.Random):
            return rng
    return random.Random()


@dataclass
class PluginContext:
    """The concrete :class:`PluginHandle` the config loader passes to factories.

    It owns the plugins built so far (so a factory can look up one declared before it), the
    clock (``time.monotonic`` unless a test injects one) and one RNG shared by every plugin, so a
    seeded dry run is reproducible end to end.
    """

    clock: Callable[[], float] = time.monotonic
    random_source: random.Random = field(default_factory=random.Random)
    plugins: dict[str, Plugin] = field(default_factory=dict)

    def plugin(self, name: str) -> Plugin:
        found = self.plugins.get(name)
        if found is None:
            raise PluginValidationError(f"plugin {name!r} is not defined (or defined later)")
        return found

    def now(self) -> float:
        return self.clock()

    def rng(self) -> random.Random:
        return self.random_source


PluginFactory = Callable[[str, Mapping[str, Any], PluginHandle], Plugin]


@dataclass
class PluginRegistry:
    factories: dict[str, PluginFactory] = field(default_factory=dict)

    def register(self, type_name: str, factory: PluginFactory) -> None:
        if type_name in self.factories:
            raise PluginValidationError(f"plugin type {type_name!r} registered twice")
        self.factories[type_name] = factory

    def register_all(self, plugins: Mapping[str, PluginFactory]) -> None:
        for type_name, factory in plugins.items():
            self.register(type_name, factory)

    def create(
        self, type_name: str, name: str, parameters: Mapping[str, Any], handle: PluginHandle
    ) -> Plugin:
        factory = self.factories.get(type_name)
        if factory is None:
            known = ", ".join(sorted(self.factories))
            raise PluginValidationError(
                f"plugin {name!r}: unknown type {type_name!r} (registered: {known})"
            )
        return factory(name, parameters, handle)

    def __contains__(self, type_name: object) -> bool:
        return type_name in self.factories

    @property
    def types(self) -> Iterable[str]:
        return sorted(self.factories)


def default_registry(*, include_entry_points: bool = True) -> PluginRegistry:
    registry = PluginRegistry()
    for module_name in BUILTIN_PLUGIN_MODULES:
        module = importlib.import_module(module_name)
        registry.register_all(module.PLUGINS)
    if include_entry_points:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            registry.register(ep.name, ep.load())
    return registry
