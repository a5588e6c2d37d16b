"""Build the scheduler, saturation detector and request hooks from an EndpointPickerConfig.

This is where the defaulting rules that depend on what a plugin *is* live (upstream
``applyStaticDefaults`` / ``applySystemDefaults`` in ``pkg/epp/config/loader``):

* every plugin type must be registered, and its parameters are validated as it is built;
* a plugin is classified by the extension points it implements, once, here (never on the
  request path): Filter (``filter``), Scorer (``score`` + ``category``), Picker (``pick``),
  ProfileHandler (``pick`` + ``process_results``), SaturationDetector (``saturation``), and
  request hooks (``prepare_data`` / ``pre_request`` / ``response_complete``); one plugin may be
  several (``utilization-detector`` is a filter and a detector);
* no profiles -> a ``default`` profile with every filter, scorer and picker, in declaration order;
* at most one profile handler; none and exactly one profile -> ``single-profile-handler``;
* a profile without a picker gets ``max-score-picker``; a scorer without a weight gets 1;
* no ``saturationDetector`` -> ``utilization-detector`` with its defaults.

Errors are :class:`~kvroute.errors.ConfigError` naming the source, the field and the plugin.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from kvroute.config.epp_config import (
    FEATURE_GATE_DEFAULTS,
    EndpointPickerConfig,
    PluginSpec,
    ProfilePluginRef,
    SchedulingProfileSpec,
)
from kvroute.datalayer.plugins import data_layer_setup
from kvroute.errors import ConfigError, PluginValidationError
from kvroute.plugins.base import Plugin
from kvroute.plugins.registry import PluginContext, PluginRegistry
from kvroute.protocol.parsers import ParserSet, parser_set_for
from kvroute.scheduling.interfaces import (
    Filter,
    Picker,
    ProfileHandler,
    SaturationDetector,
    Scorer,
)
from kvroute.scheduling.profile import SchedulerProfile, WeightedScorer
from kvroute.scheduling.scheduler import Scheduler
from kvroute.scheduling.timing import PluginTimings

DEFAULT_PROFILE = "default"
DEFAULT_HANDLER_TYPE = "single-profile-handler"
DEFAULT_PICKER_TYPE = "max-score-picker"
DEFAULT_DETECTOR_TYPE = "utilization-detector"

HOOK_METHODS = (
    "prepare_data",
    "pre_request",
    "response_complete",
    "process_request_headers",  # RequestHeaderProcessor
    "screen",  # Screener
    "admit_request",  # Admitter
    "response_metadata",  # ResponseMetadata
)


def is_filter(p: object) -> bool:
    return callable(getattr(p, "filter", None))


def is_scorer(p: object) -> bool:
    return callable(getattr(p, "score", None)) and hasattr(p, "category")


def is_profile_handler(p: object) -> bool:
    return callable(getattr(p, "pick", None)) and callable(getattr(p, "process_results", None))


def is_picker(p: object) -> bool:
    return callable(getattr(p, "pick", None)) and not is_profile_handler(p)


def is_saturation_detector(p: object) -> bool:
    return callable(getattr(p, "saturation", None))


def is_hook(p: object) -> bool:
    return any(callable(getattr(p, m, None)) for m in HOOK_METHODS)


def kinds_of(p: object) -> list[str]:
    """Human names of the extension points ``p`` implements (for errors and traces)."""
    out = []
    for kind, check in (
        ("filter", is_filter),
        ("scorer", is_scorer),
        ("picker", is_picker),
        ("profile handler", is_profile_handler),
        ("saturation detector", is_saturation_detector),
        ("request hook", is_hook),
    ):
        if check(p):
            out.append(kind)
    return out


@dataclass(frozen=True)
class SchedulingSetup:
    """Everything the config built: what the director and the EPP's metrics layer need."""

    scheduler: Scheduler
    saturation_detector: SaturationDetector
    plugins: Mapping[str, Plugin]
    hooks: tuple[Plugin, ...]
    effective_config: EndpointPickerConfig
    timings: PluginTimings | None = None
    feature_gates: frozenset[str] = field(default_factory=frozenset)  # the gates that are on
    parsers: ParserSet = field(default_factory=ParserSet)  # requestHandler.parsers, resolved


def build_scheduling(
    config: EndpointPickerConfig,
    registry: PluginRegistry,
    *,
    source: str = "<config>",
    profile: str | None = None,
    rng: random.Random | None = None,
    clock: Callable[[], float] = time.monotonic,
    timings: PluginTimings | None = None,
) -> SchedulingSetup:
    """Instantiate and wire the plugins of ``config`` (already statically defaulted).

    ``profile`` keeps only that scheduling profile (``kvroute schedule --profile``); ``rng`` is
    shared by every plugin that draws random numbers (seed it for reproducible dry runs).
    """
    ctx = PluginContext(clock=clock, random_source=rng or random.Random())
    specs = list(config.plugins)
    for i, spec in enumerate(specs):
        _instantiate(registry, ctx, spec, f"{source}: plugins[{i}]")

    # dataLayer and parser sections act or are rejected here, before any scheduling is built.
    data_layer_setup(config, ctx.plugins, source)
    try:
        parsers = parser_set_for(config, ctx.plugins)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from exc

    handlers = [n for n, p in ctx.plugins.items() if is_profile_handler(p)]
    if len(handlers) > 1:
        raise ConfigError(
            f"{source}: plugins: only one profile handler is allowed, got {', '.join(handlers)}"
        )

    profile_specs = list(config.scheduling_profiles)
    if not profile_specs:
        refs = [
            ProfilePluginRef(plugin_ref=n)
            for n, p in ctx.plugins.items()
            if is_filter(p) or is_scorer(p) or is_picker(p)
        ]
        profile_specs = [SchedulingProfileSpec(name=DEFAULT_PROFILE, plugins=refs)]
    if profile is not None:
        chosen = [p for p in profile_specs if p.name == profile]
        if not chosen:
            names = ", ".join(p.name for p in profile_specs)
            raise ConfigError(f"{source}: no scheduling profile named {profile!r} (have: {names})")
        profile_specs = chosen

    if handlers:
        handler = cast(ProfileHandler, ctx.plugins[handlers[0]])
    elif len(profile_specs) == 1:
        handler = cast(
            ProfileHandler,
            _default_plugin(registry, ctx, specs, DEFAULT_HANDLER_TYPE, source),
        )
    else:
        raise ConfigError(
            f"{source}: schedulingProfiles: {len(profile_specs)} profiles need a profile handler "
            "plugin (single-profile-handler drives exactly one)"
        )

    profiles: dict[str, SchedulerProfile] = {}
    effective_profiles: list[SchedulingProfileSpec] = []
    for i, pspec in enumerate(profile_specs):
        built, eff = _build_profile(
            registry, ctx, specs, pspec, f"{source}: schedulingProfiles[{i}]", timings
        )
        profiles[pspec.name] = built
        effective_profiles.append(eff)

    if config.saturation_detector is not None:
        ref = config.saturation_detector.plugin_ref
        detector_obj: Plugin = ctx.plugins[ref]
        if not is_saturation_detector(detector_obj):
            raise ConfigError(
                f"{source}: saturationDetector.pluginRef: plugin {ref!r} "
                f"({detector_obj.typed_name.type}) is not a saturation detector"
            )
    else:
        detector_obj = _default_plugin(registry, ctx, specs, DEFAULT_DETECTOR_TYPE, source)

    try:
        scheduler = Scheduler(handler, profiles, timings=timings, clock=clock)
    except ConfigError as exc:
        raise ConfigError(f"{source}: schedulingProfiles: {exc.message}") from None

    effective = config.model_copy(
        update={"plugins": specs, "scheduling_profiles": effective_profiles}
    )
    return SchedulingSetup(
        scheduler=scheduler,
        saturation_detector=cast(SaturationDetector, detector_obj),
        plugins=dict(ctx.plugins),
        hooks=tuple(p for p in ctx.plugins.values() if is_hook(p)),
        effective_config=effective,
        timings=timings,
        feature_gates=frozenset(g for g in FEATURE_GATE_DEFAULTS if config.gate(g)),
        parsers=parsers,
    )


def _instantiate(
    registry: PluginRegistry, ctx: PluginContext, spec: PluginSpec, where: str
) -> Plugin:
    name = spec.instance_name
    if spec.type not in registry:
        known = ", ".join(registry.types)
        raise ConfigError(f"{where}.type: unknown plugin type {spec.type!r} (registered: {known})")
    try:
        plugin = registry.create(spec.type, name, spec.parameters or {}, ctx)
    except PluginValidationError as exc:
        raise PluginValidationError(f"{where}: {exc.message}") from None
    ctx.plugins[name] = plugin
    return plugin


def _default_plugin(
    registry: PluginRegistry,
    ctx: PluginContext,
    specs: list[PluginSpec],
    type_name: str,
    source: str,
) -> Plugin:
    """Reuse a declared plugin of that name and type, or add one with default parameters."""
    existing = ctx.plugins.get(type_name)
    if existing is not None and existing.typed_name.type == type_name:
        return existing
    if existing is not None:
        raise ConfigError(
            f"{source}: plugins: the name {type_name!r} is taken by a "
            f"{existing.typed_name.type} plugin; kvroute needs it for the default {type_name}"
        )
    spec = PluginSpec(name=type_name, type=type_name)
    specs.append(spec)
    return _instantiate(registry, ctx, spec, f"{source}: (default plugin {type_name})")


def _build_profile(
    registry: PluginRegistry,
    ctx: PluginContext,
    specs: list[PluginSpec],
    pspec: SchedulingProfileSpec,
    where: str,
    timings: PluginTimings | None,
) -> tuple[SchedulerProfile, SchedulingProfileSpec]:
    filters: list[Filter] = []
    scorers: list[WeightedScorer] = []
    pickers: list[tuple[str, Picker]] = []
    refs: list[ProfilePluginRef] = []
    for j, ref in enumerate(pspec.plugins):
        plugin = ctx.plugins[ref.plugin_ref]
        used = False
        eff: dict[str, Any] = {"pluginRef": ref.plugin_ref}
        if is_filter(plugin):
            filters.append(cast(Filter, plugin))
            used = True
        if is_scorer(plugin):
            weight = 1.0 if ref.weight is None else ref.weight
            scorers.append(WeightedScorer(cast(Scorer, plugin), weight))
            eff["weight"] = weight
            used = True
        if is_picker(plugin):
            pickers.append((ref.plugin_ref, cast(Picker, plugin)))
            used = True
        if not used:
            kinds = ", ".join(kinds_of(plugin)) or "no scheduling extension point"
            raise ConfigError(
                f"{where}.plugins[{j}].pluginRef: plugin {ref.plugin_ref!r} "
                f"({plugin.typed_name.type}) is not a filter, scorer or picker ({kinds})"
            )
        refs.append(ProfilePluginRef.model_validate(eff))
    if len(pickers) > 1:
        names = ", ".join(n for n, _ in pickers)
        raise ConfigError(f"{where}: profile {pspec.name!r} has more than one picker: {names}")
    if pickers:
        picker = pickers[0][1]
    else:
        picker = cast(Picker, _default_plugin(registry, ctx, specs, DEFAULT_PICKER_TYPE, where))
        if not is_picker(picker):
            raise ConfigError(f"{where}: default {DEFAULT_PICKER_TYPE} is not a picker")
        refs.append(ProfilePluginRef(plugin_ref=picker.typed_name.name))
    profile = SchedulerProfile(pspec.name, filters, scorers, picker, timings)
    return profile, SchedulingProfileSpec(name=pspec.name, plugins=refs)
