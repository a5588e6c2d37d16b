"""The plugin author's API: everything a kvroute plugin needs, from one stable import.

A plugin is a class with a ``typed_name`` and one or more of the extension-point methods
(``filter``, ``score``, ``pick``, ``prepare_data``, ``pre_request``, ``response_complete``...); a
factory ``(name, parameters, handle) -> plugin`` validates its parameters (a :class:`PluginParams`
model read with :func:`parse_params`) and raises :class:`PluginValidationError` naming the field.
A package makes its factories known to kvroute through the ``kvroute.plugins`` entry-point group
(:data:`PLUGIN_ENTRY_POINT_GROUP`); :meth:`PluginRegistry.register` adds one in-process::

    from kvroute.sdk import PluginRegistry, default_registry

    registry = default_registry()
    registry.register("my-scorer", my_scorer_factory)

The names below are the supported surface; anything imported from elsewhere in ``kvroute`` is an
implementation detail that may move.
"""

from __future__ import annotations

from kvroute.errors import ConfigError, EppError, ErrorCode, PluginValidationError
from kvroute.framework.accelerator import (
    ACCELERATOR_CLASSES,
    ACCELERATOR_LABEL,
    COST_LABEL,
    AcceleratorClass,
    EndpointHardware,
    endpoint_hardware,
)
from kvroute.framework.endpoint import Endpoint, EndpointLoad, EndpointMetrics
from kvroute.framework.hooks import PrepareData, PreRequest, ResponseComplete
from kvroute.framework.request import ApiKind, Criticality, InferenceRequest, Usage
from kvroute.framework.scheduling import (
    CycleState,
    Filter,
    Picker,
    ProfileHandler,
    ProfileResult,
    ProfileRunner,
    SaturationDetector,
    SchedulingResult,
    ScoredEndpoint,
    Scorer,
    ScorerCategory,
    StateKey,
)
from kvroute.plugins.base import Plugin, TypedName
from kvroute.plugins.registry import ENTRY_POINT_GROUP as PLUGIN_ENTRY_POINT_GROUP
from kvroute.plugins.registry import (
    PluginFactory,
    PluginHandle,
    PluginRegistry,
    default_registry,
    handle_rng,
)
from kvroute.scheduling.plugins.params import PluginParams, parse_params

__all__ = [
    "ACCELERATOR_CLASSES",
    "ACCELERATOR_LABEL",
    "COST_LABEL",
    "PLUGIN_ENTRY_POINT_GROUP",
    "AcceleratorClass",
    "ApiKind",
    "ConfigError",
    "Criticality",
    "CycleState",
    "Endpoint",
    "EndpointHardware",
    "EndpointLoad",
    "EndpointMetrics",
    "EppError",
    "ErrorCode",
    "Filter",
    "InferenceRequest",
    "Picker",
    "Plugin",
    "PluginFactory",
    "PluginHandle",
    "PluginParams",
    "PluginRegistry",
    "PluginValidationError",
    "PreRequest",
    "PrepareData",
    "ProfileHandler",
    "ProfileResult",
    "ProfileRunner",
    "ResponseComplete",
    "SaturationDetector",
    "SchedulingResult",
    "ScoredEndpoint",
    "Scorer",
    "ScorerCategory",
    "StateKey",
    "TypedName",
    "Usage",
    "default_registry",
    "endpoint_hardware",
    "handle_rng",
    "parse_params",
]
