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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Protocol

from kvroute.errors import PluginValidationError
from kvroute.plugins.base import Plugin

ENTRY_POINT_GROUP = "kvroute.plugins"

BUILTIN_PLUGIN_MODULES: tuple[str, ...] = ()


class PluginHandle(Protocol):
    """What a factory may reach: other plugins by name (after all are built) and a clock."""

    def plugin(self, name: str) -> Plugin: ...

    def now(self) -> float: ...


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
