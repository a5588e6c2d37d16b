"""``flowControl`` config: defaults, policy refs, and load errors that name the key."""

from __future__ import annotations

import pytest

from kvroute.config.epp_config import parse_epp_config
from kvroute.errors import ConfigError
from kvroute.flowcontrol.build import build_flow_control
from kvroute.flowcontrol.concurrency import ConcurrencyDetector
from kvroute.flowcontrol.policies import (
    FcfsOrdering,
    ProgramAwareFairness,
    RoundRobinFairness,
    SloDeadlineOrdering,
)
from kvroute.plugins.registry import default_registry
from kvroute.scheduling.builder import build_scheduling

HEAD = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- {type: concurrency-detector, parameters: {maxConcurrency: 8}}
- type: round-robin-fairness-policy
"""


def build(flow: str = ""):  # type: ignore[no-untyped-def]
    config = parse_epp_config(HEAD + flow, "epp.yaml")
    registry = default_registry()
    setup = build_scheduling(config, registry, source="epp.yaml")
    return build_flow_control(config.flow_control, setup.plugins, registry, "epp.yaml")


def test_defaults_without_a_section_are_upstreams_but_fairness() -> None:
    fc = build()
    assert fc is not None
    s = fc.settings
    assert s.request_ttl == 60.0
    assert s.no_endpoint_ttl == 60.0
    assert s.default_band.max_requests == 5000
    assert s.default_band.max_bytes == 10**9
    assert isinstance(s.default_band.ordering, FcfsOrdering)
    assert isinstance(s.default_band.fairness, ProgramAwareFairness)  # upstream: global-strict
    assert s.default_band.fairness.params.las_weight_head_wait == 0.0  # pure LAS
    assert s.default_band.fairness.params.las_weight_service == 1.0
    assert s.max_bytes is None
    assert fc.detector is None


def test_sample_section() -> None:
    fc = build(
        """\
flowControl:
  maxBytes: 8Gi
  defaultRequestTTL: 30s
  noEndpointRequestTTL: 300s
  saturationDetector: {pluginRef: concurrency-detector}
  defaultPriorityBand:
    {maxRequests: "5000", maxBytes: 1G, fairnessPolicyRef: round-robin-fairness-policy}
  defaultNegativePriorityBand: {maxRequests: "100"}
  priorityBands:
  - {priority: 100, orderingPolicyRef: slo-deadline-ordering-policy}
"""
    )
    assert fc is not None
    s = fc.settings
    assert s.max_bytes == 8 * 2**30
    assert s.request_ttl == 30.0
    assert s.no_endpoint_ttl == 300.0
    assert isinstance(fc.detector, ConcurrencyDetector)
    assert fc.detector.params.max_concurrency == 8
    assert isinstance(s.default_band.fairness, RoundRobinFairness)
    assert s.band_settings(-3).max_requests == 100
    assert isinstance(s.band_settings(-3).fairness, RoundRobinFairness)  # inherits the default
    assert isinstance(s.band_settings(100).ordering, SloDeadlineOrdering)
    assert s.band_settings(7) is s.default_band


def test_zero_ttl_means_none_and_disabled_section() -> None:
    fc = build("flowControl: {defaultRequestTTL: 0s}\n")
    assert fc is not None
    assert fc.settings.request_ttl == 0.0
    assert build("flowControl: {enabled: false}\n") is None


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("{defaultPriorityBand: {maxRequests: 0}}", "flowControl.defaultPriorityBand.maxRequests"),
        ("{priorityBands: [{priority: 1, maxBytes: 0}]}", "flowControl.priorityBands[0].maxBytes"),
        ("{defaultRequestTTL: -5s}", "flowControl.defaultRequestTTL"),
        ("{noEndpointRequestTTL: soon}", "flowControl.noEndpointRequestTTL"),
        ("{enableEviction: true}", "flowControl.enableEviction"),
        ("{maxBytes: lots}", "flowControl.maxBytes"),
        ("{fairnessPolicy: x}", "flowControl.fairnessPolicy"),
        (
            "{defaultPriorityBand: {fairnessPolicyRef: no-such-policy}}",
            "flowControl.defaultPriorityBand.fairnessPolicyRef",
        ),
        (
            "{priorityBands: [{priority: 1}, {priority: 1}]}",
            "flowControl.priorityBands",
        ),
    ],
)
def test_bad_input_fails_at_load_naming_the_key(section: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        build(f"flowControl: {section}\n")
    assert key in err.value.message


def test_a_ref_to_the_wrong_kind_of_plugin_names_the_key() -> None:
    with pytest.raises(ConfigError) as err:
        build("flowControl: {usageLimitPolicyPluginRef: round-robin-fairness-policy}\n")
    assert "flowControl.usageLimitPolicyPluginRef" in err.value.message
    assert "not a usage limit policy" in err.value.message


def test_unknown_plugin_type_fails_at_load() -> None:
    config = parse_epp_config(HEAD + "- type: fancy-fairness-policy\n", "epp.yaml")
    with pytest.raises(ConfigError) as err:
        build_scheduling(config, default_registry())
    assert "fancy-fairness-policy" in err.value.message
