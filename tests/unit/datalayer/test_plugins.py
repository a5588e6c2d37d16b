"""Upstream EndpointPickerConfigs that name data-layer and parser plugins load and build."""

from __future__ import annotations

import pytest

from kvroute.config.epp_config import parse_epp_config
from kvroute.datalayer.plugins import CoreMetricsExtractor, MetricsDataSource, RequestParser
from kvroute.errors import ConfigError
from kvroute.plugins.registry import default_registry
from kvroute.scheduling.builder import build_scheduling

# gie-epp.md §3.5, verbatim: the effective upstream default configuration.
UPSTREAM_DEFAULT = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
- type: metrics-data-source
- type: core-metrics-extractor
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: queue-scorer, weight: 2}
  - {pluginRef: kv-cache-utilization-scorer, weight: 2}
  - {pluginRef: prefix-cache-scorer, weight: 3}
  - {pluginRef: max-score-picker}
dataLayer:
  sources: [{pluginRef: metrics-data-source, extractors: [{pluginRef: core-metrics-extractor}]}]
"""


def test_upstream_default_config_builds_with_data_layer_plugins() -> None:
    registry = default_registry()
    setup = build_scheduling(parse_epp_config(UPSTREAM_DEFAULT, "default.yaml"), registry)
    assert isinstance(setup.plugins["metrics-data-source"], MetricsDataSource)
    extractor = setup.plugins["core-metrics-extractor"]
    assert isinstance(extractor, CoreMetricsExtractor)
    assert extractor.mappings.for_labels({}).name == "vllm"
    assert setup.plugins["metrics-data-source"].params.path == "/metrics"


def test_parser_plugin_is_accepted() -> None:
    text = UPSTREAM_DEFAULT + "parser: {pluginRef: openai-parser}\n"
    text = text.replace(
        "- type: core-metrics-extractor\n",
        "- type: core-metrics-extractor\n- type: openai-parser\n",
    )
    setup = build_scheduling(parse_epp_config(text, "p.yaml"), default_registry())
    assert isinstance(setup.plugins["openai-parser"], RequestParser)


@pytest.mark.parametrize(
    ("plugin", "needle"),
    [
        ("{type: metrics-data-source, parameters: {pth: /m}}", "metrics-data-source"),
        ("{type: core-metrics-extractor, parameters: {engineConfigs: 3}}", "engineConfigs"),
        ("{type: openai-parser, parameters: {x: 1}}", "takes no parameters"),
    ],
    ids=["unknown-data-source-field", "bad-engine-configs", "parser-with-params"],
)
def test_bad_parameters_fail_at_load(plugin: str, needle: str) -> None:
    text = f"""
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- {plugin}
"""
    with pytest.raises(ConfigError) as exc:
        build_scheduling(parse_epp_config(text, "bad.yaml"), default_registry())
    assert needle in exc.value.message
