"""build_scheduling: the defaulting rules that need plugin instances, and wiring errors."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import pytest

from kvroute.config.epp_config import load_epp_config, parse_epp_config
from kvroute.datastore.endpoint import Endpoint
from kvroute.errors import ConfigError, PluginValidationError
from kvroute.plugins.base import TypedName
from kvroute.plugins.registry import PluginHandle, PluginRegistry, default_registry
from kvroute.scheduling.builder import SchedulingSetup, build_scheduling
from kvroute.scheduling.interfaces import CycleState
from kvroute.scheduling.plugins.filters.utilization_detector import UtilizationDetector
from kvroute.scheduling.request import InferenceRequest
from kvroute.scheduling.timing import PluginTimings
from tests.fakes import NOW, make_endpoint, make_request, names

CONFIGS = Path(__file__).parents[2] / "testdata" / "configs"
HEAD = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
REGISTRY = default_registry(include_entry_points=False)


def _build(text: str, **kwargs: Any) -> SchedulingSetup:
    return build_scheduling(
        parse_epp_config(text, "epp.yaml"),
        REGISTRY,
        source="epp.yaml",
        rng=random.Random(0),
        clock=lambda: NOW,
        **kwargs,
    )


def _profile_refs(setup: SchedulingSetup) -> dict[str, list[tuple[str, float | None]]]:
    return {
        p.name: [(r.plugin_ref, r.weight) for r in p.plugins]
        for p in setup.effective_config.scheduling_profiles
    }


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_config_builds_and_schedules(path: Path) -> None:
    setup = build_scheduling(load_epp_config(path), REGISTRY, source=str(path))
    endpoints = [make_endpoint("e0", waiting=1, kv=0.2), make_endpoint("e1", waiting=3)]
    state = CycleState(NOW)
    result = setup.scheduler.schedule(make_request(), endpoints, state=state)
    assert result.primary is not None
    assert set(names(result.primary.targets)) <= {"e0", "e1"}


def test_no_profiles_builds_default_with_every_filter_scorer_picker() -> None:
    setup = build_scheduling(load_epp_config(CONFIGS / "weighted-random.yaml"), REGISTRY)
    assert _profile_refs(setup) == {
        "default": [
            ("queue-scorer", 1.0),
            ("running-requests-size-scorer", 1.0),
            ("weighted-random-picker", None),
        ]
    }
    assert setup.scheduler.handler.typed_name.type == "single-profile-handler"


def test_single_profile_gets_handler_picker_and_detector() -> None:
    setup = _build(
        HEAD
        + "plugins: [{type: queue-scorer}]\n"
        + "schedulingProfiles: [{name: p, plugins: [{pluginRef: queue-scorer}]}]\n"
    )
    assert _profile_refs(setup) == {"p": [("queue-scorer", 1.0), ("max-score-picker", None)]}
    types = [(p.name, p.type) for p in setup.effective_config.plugins]
    assert ("single-profile-handler", "single-profile-handler") in types
    assert ("max-score-picker", "max-score-picker") in types
    assert ("utilization-detector", "utilization-detector") in types
    assert isinstance(setup.saturation_detector, UtilizationDetector)


def test_explicit_saturation_detector_with_parameters_is_used() -> None:
    setup = build_scheduling(load_epp_config(CONFIGS / "lora-fallbacks.yaml"), REGISTRY)
    detector = setup.saturation_detector
    assert detector.typed_name == TypedName("utilization-detector", "saturation")
    assert isinstance(detector, UtilizationDetector)
    assert detector.params.queue_depth_threshold == 8
    assert detector.params.metrics_staleness_threshold == pytest.approx(0.5)
    endpoints = [make_endpoint(f"e{i}", waiting=i) for i in range(5)]
    result = setup.scheduler.schedule(make_request(), endpoints, state=CycleState(NOW))
    assert result.primary is not None
    assert len(result.primary.targets) == 3


def test_profile_selection_keeps_one_profile() -> None:
    text = HEAD + (
        "plugins: [{type: queue-scorer}, {type: random-picker}]\n"
        "schedulingProfiles:\n"
        "- {name: a, plugins: [{pluginRef: queue-scorer}]}\n"
        "- {name: b, plugins: [{pluginRef: random-picker}]}\n"
    )
    setup = _build(text, profile="b")
    assert list(setup.scheduler.profiles) == ["b"]
    with pytest.raises(ConfigError, match="2 profiles need a profile handler"):
        _build(text)
    with pytest.raises(ConfigError, match="no scheduling profile named 'c' \\(have: a, b\\)"):
        _build(text, profile="c")


INVALID = [
    (
        "plugins: [{type: queue-scorer}, {type: fastest-scorer}]\n",
        "epp.yaml: plugins[1].type: unknown plugin type 'fastest-scorer' (registered:",
    ),
    (
        "plugins:\n- {type: queue-scorer}\n- name: picker\n  type: max-score-picker\n"
        "  parameters: {maxNumOfEndpoints: 0}\n",
        "epp.yaml: plugins[1]: plugin 'picker' (max-score-picker): parameters.maxNumOfEndpoints:",
    ),
    (
        "plugins:\n- {type: queue-scorer, parameters: {turbo: true}}\n",
        "epp.yaml: plugins[0]: plugin 'queue-scorer' (queue-scorer): parameters.turbo:",
    ),
    (
        "plugins:\n- {name: h1, type: single-profile-handler}\n"
        "- {name: h2, type: single-profile-handler}\n",
        "only one profile handler is allowed, got h1, h2",
    ),
    (
        "plugins: [{type: queue-scorer}, {type: single-profile-handler}]\n"
        "schedulingProfiles:\n- {name: a, plugins: [{pluginRef: queue-scorer}]}\n"
        "- {name: b, plugins: [{pluginRef: queue-scorer}]}\n",
        "single-profile-handler 'single-profile-handler' needs exactly one scheduling profile",
    ),
    (
        "plugins: [{type: single-profile-handler}]\n"
        "schedulingProfiles: [{name: a, plugins: [{pluginRef: single-profile-handler}]}]\n",
        "schedulingProfiles[0].plugins[0].pluginRef: plugin 'single-profile-handler' "
        "(single-profile-handler) is not a filter, scorer or picker (profile handler)",
    ),
    (
        "plugins: [{type: random-picker}, {type: max-score-picker}]\n"
        "schedulingProfiles: [{name: a, plugins: [{pluginRef: random-picker}, "
        "{pluginRef: max-score-picker}]}]\n",
        "profile 'a' has more than one picker: random-picker, max-score-picker",
    ),
    (
        "plugins: [{type: queue-scorer}]\nsaturationDetector: {pluginRef: queue-scorer}\n",
        "saturationDetector.pluginRef: plugin 'queue-scorer' (queue-scorer) is not a saturation",
    ),
    (
        "plugins: [{type: queue-scorer}, {name: max-score-picker, type: queue-scorer}]\n"
        "schedulingProfiles: [{name: a, plugins: [{pluginRef: queue-scorer}]}]\n",
        "the name 'max-score-picker' is taken by a queue-scorer plugin",
    ),
]
INVALID_IDS = [
    "unregistered type",
    "picker parameter out of range",
    "unknown parameter",
    "two profile handlers",
    "single handler with two profiles",
    "handler used as a profile plugin",
    "two pickers in one profile",
    "detector that is not a detector",
    "default plugin name taken",
]


@pytest.mark.parametrize(("body", "message"), INVALID, ids=INVALID_IDS)
def test_wiring_errors(body: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        _build(HEAD + body)
    assert message in exc.value.message


def test_parameter_errors_are_plugin_validation_errors() -> None:
    with pytest.raises(PluginValidationError):
        _build(HEAD + "plugins: [{type: random-picker, parameters: {maxNumOfEndpoints: x}}]\n")


def test_utilization_detector_can_be_filter_and_detector_at_once() -> None:
    setup = _build(
        HEAD
        + "plugins: [{type: utilization-detector}, {type: queue-scorer}]\n"
        + "saturationDetector: {pluginRef: utilization-detector}\n"
    )
    profile = setup.scheduler.profiles["default"]
    assert profile.filters[0] is cast(object, setup.saturation_detector)
    endpoints = [make_endpoint("e0", waiting=9), make_endpoint("e1", waiting=7, kv=0.1)]
    # Both saturated: the filter fails open and the queue scorer decides.
    result = setup.scheduler.schedule(make_request(), endpoints, state=CycleState(NOW))
    assert result.primary is not None
    assert names(result.primary.targets) == ["e1"]


class _Hook:
    def __init__(self, name: str) -> None:
        self.typed_name = TypedName("test-hook", name)
        self.prepared: list[str] = []

    def prepare_data(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> None:
        self.prepared.append(request.request_id)


def _hook_factory(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> _Hook:
    return _Hook(name)


def test_request_hooks_are_collected_and_not_put_in_profiles() -> None:
    registry = PluginRegistry(dict(REGISTRY.factories))
    registry.register("test-hook", _hook_factory)
    config = parse_epp_config(HEAD + "plugins: [{type: test-hook}, {type: queue-scorer}]\n")
    setup = build_scheduling(config, registry)
    assert [h.typed_name.name for h in setup.hooks] == ["test-hook"]
    assert _profile_refs(setup) == {"default": [("queue-scorer", 1.0), ("max-score-picker", None)]}


def test_timings_cover_plugins_handler_and_cycle() -> None:
    timings = PluginTimings()
    setup = _build(HEAD + "plugins: [{type: queue-scorer}]\n", timings=timings)
    setup.scheduler.schedule(make_request(), [make_endpoint("e0")], state=CycleState(NOW))
    points = {(k.extension_point, k.plugin_name) for k in timings.drain()}
    assert points == {
        ("Scorer", "queue-scorer"),
        ("Picker", "max-score-picker"),
        ("ProfileHandler", "single-profile-handler"),
        ("SchedulerE2E", "scheduler"),
    }


def test_built_setup_lists_the_gates_that_are_on() -> None:
    head = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
    text = head + "plugins: [{type: queue-scorer}]\nfeatureGates: ['flowControl=false']\n"
    setup = build_scheduling(parse_epp_config(text), default_registry())
    assert setup.feature_gates == frozenset({"haPopulateNonLeaderDatastore"})
    setup = build_scheduling(
        parse_epp_config(text.replace("flowControl=false", "flowControl")), default_registry()
    )
    assert setup.feature_gates == frozenset({"flowControl", "haPopulateNonLeaderDatastore"})
