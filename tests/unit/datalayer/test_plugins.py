"""Upstream EndpointPickerConfigs that name data-layer and parser plugins load and build."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest

from kvroute.config.epp_config import parse_epp_config
from kvroute.datalayer.plugins import (
    CoreMetricsExtractor,
    MetricsDataSource,
    RequestParser,
    data_layer_setup,
)
from kvroute.datastore.store import Datastore
from kvroute.errors import ConfigError, PayloadTooLargeError
from kvroute.plugins.base import Plugin, TypedName
from kvroute.plugins.registry import PluginRegistry, default_registry
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


def test_openai_parser_media_parameters_act() -> None:
    """maxMediaItemBytes and mediaTokens reach the parser the EPP runs (issue 14)."""
    text = UPSTREAM_DEFAULT + "requestHandler: {parsers: [{pluginRef: mm}]}\n"
    text = text.replace(
        "- type: core-metrics-extractor\n",
        "- type: core-metrics-extractor\n- name: mm\n  type: openai-parser\n  parameters:\n"
        "    maxMediaItemBytes: 10\n"
        "    mediaTokens: [{modelPattern: '^m$', image: {rule: fixed, tokens: 7}}]\n",
    )
    setup = build_scheduling(parse_epp_config(text, "p.yaml"), default_registry())
    url = {"type": "image_url", "image_url": {"url": "https://x/y.png"}}
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": [url]}]}).encode()
    assert setup.parsers.parse_request(body, "/v1/chat/completions").media[0].tokens == 7
    big = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 40}}
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": [big]}]}).encode()
    with pytest.raises(PayloadTooLargeError, match="limit of 10 bytes"):
        setup.parsers.parse_request(body, "/v1/chat/completions")


@pytest.mark.parametrize(
    ("plugin", "needle"),
    [
        ("{type: metrics-data-source, parameters: {pth: /m}}", "metrics-data-source"),
        ("{type: core-metrics-extractor, parameters: {engineConfigs: 3}}", "engineConfigs"),
        ("{type: openai-parser, parameters: {x: 1}}", "parameters.x: Extra inputs"),
        ("{type: anthropic-parser, parameters: {x: 1}}", "takes no parameters"),
        ("{type: openai-parser, parameters: {maxMediaItemBytes: 0}}", "maxMediaItemBytes"),
        (
            "{type: openai-parser, parameters: {mediaTokens: [{modelPattern: '('}]}}",
            "mediaTokens.0.modelPattern",
        ),
    ],
    ids=[
        "unknown-data-source-field",
        "bad-engine-configs",
        "openai-parser-unknown-param",
        "parser-with-params",
        "openai-parser-bad-limit",
        "openai-parser-bad-pattern",
    ],
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


def _build(text: str) -> None:
    build_scheduling(parse_epp_config(text, "dl.yaml"), default_registry(), source="dl.yaml")


HEAD = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
SCORER = "- type: queue-scorer\n"

REJECTED = [
    (
        SCORER + "- {name: a, type: metrics-data-source}\n- {name: b, type: metrics-data-source}\n"
        "dataLayer:\n  sources: [{pluginRef: a}, {pluginRef: b}]\n",
        "dl.yaml: dataLayer.sources[1].pluginRef: kvroute runs one metrics-data-source, and 'a' "
        "is listed already",
    ),
    (
        SCORER + "dataLayer:\n  sources: [{pluginRef: queue-scorer}]\n",
        "dl.yaml: dataLayer.sources[0].pluginRef: plugin 'queue-scorer' (queue-scorer) is not a "
        "data source",
    ),
    (
        SCORER + "- type: metrics-data-source\n"
        "dataLayer:\n  sources: [{pluginRef: metrics-data-source, extractors: "
        "[{pluginRef: queue-scorer}]}]\n",
        "dl.yaml: dataLayer.sources[0].extractors[0].pluginRef: plugin 'queue-scorer' "
        "(queue-scorer) is not a core-metrics-extractor",
    ),
    (
        SCORER + "- type: metrics-data-source\n- {name: x1, type: core-metrics-extractor}\n"
        "- {name: x2, type: core-metrics-extractor}\n"
        "dataLayer:\n  sources: [{pluginRef: metrics-data-source, extractors: "
        "[{pluginRef: x1}, {pluginRef: x2}]}]\n",
        "dl.yaml: dataLayer.sources[0].extractors: kvroute runs one core-metrics-extractor, got 2",
    ),
    (
        SCORER + "- {name: a, type: metrics-data-source}\n- {name: b, type: metrics-data-source}\n"
        "dataLayer:\n  sources: [{pluginRef: a}]\n",
        "dl.yaml: plugins: plugin 'b' (metrics-data-source) is not listed in dataLayer.sources",
    ),
    (
        SCORER + "- {name: a, type: metrics-data-source}\n- {name: b, type: metrics-data-source}\n",
        "dl.yaml: plugins: 2 metrics-data-source plugins (a, b) and no dataLayer.sources",
    ),
    (
        SCORER + "parser: {pluginRef: queue-scorer}\n",
        "dl.yaml: requestHandler.parsers: the plugin 'queue-scorer' (queue-scorer) is not a "
        "parser plugin",
    ),
    (
        SCORER + "requestHandler:\n  parsers: [{pluginRef: queue-scorer}]\n",
        "dl.yaml: requestHandler.parsers: the plugin 'queue-scorer' (queue-scorer) is not a "
        "parser plugin",
    ),
]


@pytest.mark.parametrize(
    ("plugins", "message"),
    REJECTED,
    ids=[
        "two sources",
        "source of another type",
        "extractor of another type",
        "two extractors",
        "declared source left out of dataLayer",
        "two sources without dataLayer",
        "parser names a scorer",
        "requestHandler parser names a scorer",
    ],
)
def test_unsupported_data_layer_and_parser_layouts_are_rejected(plugins: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        _build(HEAD + "plugins:\n" + plugins)
    assert message in exc.value.message


def test_listed_source_and_extractor_are_the_ones_used() -> None:
    text = HEAD + (
        "plugins:\n" + SCORER + "- {name: src, type: metrics-data-source, parameters: "
        "{scheme: https, path: /m2, insecureSkipVerify: false}}\n"
        "- {name: ext, type: core-metrics-extractor, parameters: {engineConfigs: "
        "[{name: vllm, queuedRequestsSpec: 'my_queue'}]}}\n"
        "dataLayer:\n  sources: [{pluginRef: src, extractors: [{pluginRef: ext}]}]\n"
    )
    setup = build_scheduling(parse_epp_config(text, "dl.yaml"), default_registry())
    resolved = data_layer_setup(setup.effective_config, setup.plugins)
    assert resolved.source is setup.plugins["src"]
    assert resolved.extractor is setup.plugins["ext"]
    collector = resolved.collector(Datastore(), 0.05)
    assert (collector.scheme, collector.path, collector.insecure_skip_verify) == (
        "https",
        "/m2",
        False,
    )
    assert resolved.mappings is setup.plugins["ext"].mappings


def test_no_data_layer_uses_defaults() -> None:
    setup = build_scheduling(parse_epp_config(HEAD + "plugins:\n" + SCORER), default_registry())
    resolved = data_layer_setup(setup.effective_config, setup.plugins)
    assert (resolved.source, resolved.extractor) == (None, None)
    collector = resolved.collector(Datastore(), 0.05)
    assert (collector.scheme, collector.path) == ("http", "/metrics")


def test_request_handler_openai_parser_is_accepted() -> None:
    text = HEAD + (
        "plugins:\n" + SCORER + "- type: openai-parser\n"
        "requestHandler:\n  parsers: [{pluginRef: openai-parser}]\n"
    )
    setup = build_scheduling(parse_epp_config(text, "p.yaml"), default_registry())
    assert isinstance(setup.plugins["openai-parser"], RequestParser)


def test_source_port_overrides_the_scrape_port_and_is_range_checked() -> None:
    def build(port: object) -> Any:
        text = HEAD + (
            "plugins:\n" + SCORER + "- {name: src, type: metrics-data-source, parameters: "
            f"{{port: {port}}}}}\n"
            "dataLayer:\n  sources: [{pluginRef: src}]\n"
        )
        setup = build_scheduling(parse_epp_config(text, "dl.yaml"), default_registry())
        return data_layer_setup(setup.effective_config, setup.plugins)

    assert build(9400).collector(Datastore(), 0.05).port == 9400
    with pytest.raises(ConfigError, match="port"):
        build(70000)


class _Source:
    """A minimal DataLayerSource: accepts extractors whose type ends in ``-extractor``."""

    replaces_metrics = False

    def __init__(self, name: str) -> None:
        self.typed_name = TypedName("test-source", name)
        self.bound: list[str] = []

    def bind_extractors(self, extractors: Sequence[Plugin]) -> list[str]:
        problems = []
        self.bound = []
        for e in extractors:
            if e.typed_name.type.endswith("-extractor"):
                self.bound.append(e.typed_name.name)
            else:
                problems.append(f"{e.typed_name.name!r} is not an extractor this source runs")
        return problems


def _registry_with_source() -> PluginRegistry:
    registry = default_registry()
    registry.register("test-source", lambda name, params, handle: _Source(name))
    return registry


def test_other_sources_are_bound_with_their_extractors_and_metrics_kept() -> None:
    text = HEAD + (
        "plugins:\n" + SCORER + "- {name: s, type: test-source}\n"
        "- {name: x, type: core-metrics-extractor}\n- type: metrics-data-source\n"
        "dataLayer:\n  sources:\n  - {pluginRef: metrics-data-source}\n"
        "  - {pluginRef: s, extractors: [{pluginRef: x}]}\n"
    )
    setup = build_scheduling(parse_epp_config(text, "dl.yaml"), _registry_with_source())
    layer = data_layer_setup(setup.effective_config, setup.plugins, "dl.yaml")
    (other,) = layer.others
    assert isinstance(other, _Source)
    assert other.bound == ["x"]
    assert layer.source is not None
    assert layer.runs_metrics


def test_an_other_source_reports_extractors_it_cannot_run() -> None:
    text = HEAD + (
        "plugins:\n" + SCORER + "- {name: s, type: test-source}\n"
        "dataLayer:\n  sources: [{pluginRef: s, extractors: [{pluginRef: queue-scorer}]}]\n"
    )
    with pytest.raises(ConfigError) as exc:
        build_scheduling(
            parse_epp_config(text, "dl.yaml"), _registry_with_source(), source="dl.yaml"
        )
    assert (
        "dl.yaml: dataLayer.sources[0].extractors: 'queue-scorer' is not an extractor this "
        "source runs" in exc.value.message
    )


def test_an_other_source_must_be_listed() -> None:
    text = HEAD + "plugins:\n" + SCORER + "- {name: s, type: test-source}\n"
    with pytest.raises(ConfigError) as exc:
        build_scheduling(parse_epp_config(text, "dl.yaml"), _registry_with_source())
    assert "plugin 's' (test-source) is a data source: list it in dataLayer.sources" in (
        exc.value.message
    )


@pytest.mark.parametrize(
    ("data_layer", "needle"),
    [
        ("", "plugin 'gpu' (dcgm-extractor) is an extractor: list it under its source"),
        (
            "dataLayer:\n  sources: [{pluginRef: metrics-data-source}]\n",
            "plugin 'gpu' (dcgm-extractor) is not listed in dataLayer.sources",
        ),
    ],
)
def test_a_polling_extractor_must_be_listed(data_layer: str, needle: str) -> None:
    """A declared dcgm/models/multicluster extractor that no source lists would never run."""
    text = HEAD + (
        "plugins:\n" + SCORER + "- {name: gpu, type: dcgm-extractor}\n"
        "- type: metrics-data-source\n" + data_layer
    )
    with pytest.raises(ConfigError) as exc:
        build_scheduling(parse_epp_config(text, "dl.yaml"), default_registry())
    assert needle in exc.value.message
