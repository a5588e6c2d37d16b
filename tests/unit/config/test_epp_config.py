"""EndpointPickerConfig: strict decoding, static defaults, errors that name source and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvroute.config.epp_config import (
    DECISION_TREE_CONFIG_TEXT,
    builtin_epp_config,
    default_config_text,
    load_epp_config,
    parse_epp_config,
)
from kvroute.errors import ConfigError
from kvroute.plugins.registry import PluginRegistry, default_registry

CONFIGS = Path(__file__).parents[2] / "testdata" / "configs"
HEAD = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"


def test_minimal_document() -> None:
    config = parse_epp_config(HEAD)
    assert config.plugins == []
    assert config.scheduling_profiles == []
    assert config.feature_gates == []


def test_plugin_name_defaults_to_type() -> None:
    config = parse_epp_config(
        HEAD + "plugins:\n- type: queue-scorer\n- name: q2\n  type: queue-scorer\n"
    )
    assert [(p.name, p.type) for p in config.plugins] == [
        ("queue-scorer", "queue-scorer"),
        ("q2", "queue-scorer"),
    ]


def test_every_upstream_section_is_accepted() -> None:
    config = load_epp_config(CONFIGS / "all-sections.yaml")
    assert config.feature_gates == ["flowControl"]
    assert config.flow_control is not None
    assert config.flow_control.max_bytes == 10 * 2**30  # "10Gi", parsed at load
    assert config.flow_control.priority_bands[0].priority == 100
    assert config.saturation_detector is not None
    assert config.saturation_detector.plugin_ref == "utilization-detector"


def test_data_layer_and_parser_references() -> None:
    text = HEAD + (
        "plugins:\n- type: src\n- type: ext\n- type: p\n"
        "dataLayer:\n  sources:\n  - pluginRef: src\n    extractors: [{pluginRef: ext}]\n"
        "parser: {pluginRef: p}\n"
    )
    config = parse_epp_config(text)
    assert config.data_layer is not None
    assert config.data_layer.sources[0].extractors[0].plugin_ref == "ext"
    assert config.parser is not None


INVALID = [
    ("", "<t>: empty document"),
    ("- a\n- b\n", "<t>: expected a mapping, got list"),
    (HEAD + "---\n" + HEAD, "<t>: expected one EndpointPickerConfig document, found 2"),
    (HEAD + "plugins: [\n", "<t>: line 4, column 1: YAML error"),
    ("apiVersion: v1\nkind: EndpointPickerConfig\n", "<t>: apiVersion: must be"),
    (
        "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: Config\n",
        "<t>: kind: must be 'EndpointPickerConfig'",
    ),
    (HEAD + "schedulers: []\n", "<t>: schedulers: unknown field"),
    (
        HEAD + "plugins:\n- type: queue-scorer\n  weight: 2\n",
        "<t>: plugins[0].weight: unknown field",
    ),
    (HEAD + "plugins:\n- name: x\n", "<t>: plugins[0].type: required field missing"),
    (HEAD + "plugins:\n- type: ''\n", "<t>: plugins[0].type: must not be empty"),
    (
        HEAD + "plugins:\n- type: q\nschedulingProfiles:\n- name: a\n  plugins:\n  - {ref: q}\n",
        "<t>: schedulingProfiles[0].plugins[0].pluginRef: required field missing",
    ),
    (
        HEAD
        + "plugins:\n- type: q\nschedulingProfiles:\n- name: a\n  plugins:\n"
        + "  - {pluginRef: q, weight: -1}\n",
        "<t>: schedulingProfiles[0].plugins[0].weight: input should be greater than or equal to 0",
    ),
    (HEAD + "featureGates: [turbo]\n", "<t>: featureGates: unknown feature gate(s) turbo"),
    (HEAD + "flowControl: {maxBytes: lots}\n", "<t>: flowControl.maxBytes: 'lots' is not"),
    (
        HEAD + "flowControl: {defaultRequestTTL: forever}\n",
        "<t>: flowControl.defaultRequestTTL: invalid duration",
    ),
    (HEAD + "plugins:\n- type: a\n- type: a\n", "<t>: plugins[1].name: duplicate plugin name 'a'"),
    (
        HEAD + "plugins:\n- {name: x, type: a}\n- {name: x, type: b}\n",
        "<t>: plugins[1].name: duplicate plugin name 'x' (also plugins[0])",
    ),
    (
        HEAD + "schedulingProfiles:\n- name: p\n  plugins: [{pluginRef: ghost}]\n",
        "<t>: schedulingProfiles[0].plugins[0].pluginRef: no plugin named 'ghost'",
    ),
    (
        HEAD + "plugins: [{type: a}]\nschedulingProfiles:\n- {name: p}\n- {name: p}\n",
        "<t>: schedulingProfiles[1].name: duplicate profile name 'p'",
    ),
    (
        HEAD + "saturationDetector: {pluginRef: sd}\n",
        "<t>: saturationDetector.pluginRef: no plugin",
    ),
    (HEAD + "parser: {pluginRef: openai-parser}\n", "<t>: parser.pluginRef: no plugin named"),
    (HEAD + "kind: EndpointPickerConfig\n", "<t>: line"),
]
INVALID_IDS = [
    "empty",
    "not a mapping",
    "two documents",
    "yaml syntax error names line",
    "wrong apiVersion",
    "wrong kind",
    "unknown top-level field",
    "unknown plugin field",
    "plugin type missing",
    "plugin type empty",
    "profile ref missing pluginRef",
    "negative weight",
    "unknown feature gate",
    "bad quantity",
    "bad duration",
    "duplicate defaulted name",
    "duplicate explicit name",
    "profile refers to undefined plugin",
    "duplicate profile name",
    "saturation detector undefined",
    "parser undefined",
    "duplicate yaml key",
]


@pytest.mark.parametrize(("text", "message"), INVALID, ids=INVALID_IDS)
def test_invalid_documents(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_epp_config(text, "<t>")
    assert message in exc.value.message
    assert exc.value.http_status == 500


def test_all_errors_reported_together() -> None:
    text = HEAD + "plugins:\n- {name: 12}\n- {type: b, extra: 1}\n"
    with pytest.raises(ConfigError) as exc:
        parse_epp_config(text, "epp.yaml")
    lines = exc.value.message.splitlines()
    assert "epp.yaml: plugins[0].name: expected a string, got an integer" in lines
    assert "epp.yaml: plugins[0].type: required field missing" in lines
    assert "epp.yaml: plugins[1].extra: unknown field" in lines


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read"):
        load_epp_config(path)


def test_default_config_includes_prefix_scorer_only_when_registered() -> None:
    without = PluginRegistry()
    without.register_all(default_registry(include_entry_points=False).factories)
    without.factories.pop("prefix-cache-scorer", None)
    text = default_config_text(without)
    assert "prefix-cache-scorer" not in text
    config = parse_epp_config(text)
    refs = [(r.plugin_ref, r.weight) for r in config.scheduling_profiles[0].plugins]
    assert refs == [
        ("queue-scorer", 2),
        ("kv-cache-utilization-scorer", 2),
        ("max-score-picker", None),
    ]

    with_prefix = PluginRegistry(dict(without.factories))
    with_prefix.factories["prefix-cache-scorer"] = without.factories["queue-scorer"]
    refs = [
        (r.plugin_ref, r.weight)
        for r in parse_epp_config(default_config_text(with_prefix)).scheduling_profiles[0].plugins
    ]
    assert ("prefix-cache-scorer", 3) in refs


@pytest.mark.parametrize(
    ("name", "profile"), [("default", "default"), ("decision-tree", "decision-tree")]
)
def test_builtin_configs(name: str, profile: str) -> None:
    config = builtin_epp_config(name, default_registry(include_entry_points=False))
    assert [p.name for p in config.scheduling_profiles] == [profile]


def test_unknown_builtin_profile() -> None:
    with pytest.raises(ConfigError, match="unknown built-in profile 'fastest'"):
        builtin_epp_config("fastest", default_registry(include_entry_points=False))


def test_decision_tree_text_parses() -> None:
    config = parse_epp_config(DECISION_TREE_CONFIG_TEXT)
    assert [p.type for p in config.plugins] == ["decision-tree-filter", "random-picker"]


@pytest.mark.parametrize(
    ("section", "injected"),
    [
        (
            "schedulingProfiles: [{name: p, plugins: [{pluginRef: max-score-picker}]}]\n",
            "max-score-picker",
        ),
        ("saturationDetector: {pluginRef: utilization-detector}\n", "utilization-detector"),
    ],
    ids=["picker in a profile", "saturation detector"],
)
def test_undeclared_system_default_plugin_is_injected(section: str, injected: str) -> None:
    config = parse_epp_config(HEAD + section)
    assert [(p.name, p.type) for p in config.plugins] == [(injected, injected)]


def test_undeclared_non_default_plugin_is_still_an_error() -> None:
    with pytest.raises(ConfigError, match="no plugin named 'random-picker'"):
        parse_epp_config(
            HEAD + "schedulingProfiles: [{name: p, plugins: [{pluginRef: random-picker}]}]\n"
        )


def test_upstream_default_profile_loads_as_written() -> None:
    config = load_epp_config(CONFIGS / "upstream-default-profile.yaml")
    assert [p.name for p in config.plugins][-1] == "max-score-picker"


# --- featureGates: llm-d-router's gates act or are rejected by name ---------------------------


def test_feature_gate_defaults_and_overrides() -> None:
    config = parse_epp_config(HEAD)
    assert config.gate("flowControl") is False
    assert config.gate("haPopulateNonLeaderDatastore") is True
    config = parse_epp_config(
        HEAD + "featureGates: [flowControl, 'haPopulateNonLeaderDatastore=true']\n"
    )
    assert config.gate("flowControl") is True
    assert config.gate("haPopulateNonLeaderDatastore") is True
    assert (
        parse_epp_config(HEAD + "featureGates: ['flowControl=false']\n").gate("flowControl")
        is False
    )


@pytest.mark.parametrize(
    ("gates", "message"),
    [
        (
            "[dataLayer]",
            "<t>: featureGates: dataLayer: removed upstream; kvroute's data layer always runs",
        ),
        ("[enableLegacyMetrics]", "<t>: featureGates: enableLegacyMetrics: removed upstream"),
        (
            "['haPopulateNonLeaderDatastore=false']",
            "<t>: featureGates: haPopulateNonLeaderDatastore=false: kvroute standbys always keep "
            "their datastore populated",
        ),
        ("['flowControl=maybe']", "'flowControl=maybe': expected flowControl=true or"),
        ("[turbo, dataLayer]", "unknown feature gate(s) turbo (known: flowControl, haPopulate"),
    ],
    ids=["dataLayer", "enableLegacyMetrics", "haPopulate=false", "bad value", "unknown+removed"],
)
def test_feature_gates_rejected_by_name(gates: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_epp_config(HEAD + f"featureGates: {gates}\n", "<t>")
    assert message in exc.value.message


def test_merge_keys_work_in_epp_config() -> None:
    text = HEAD + (
        "plugins:\n- &picker {type: max-score-picker, parameters: {maxNumOfEndpoints: 2}}\n"
        "- <<: *picker\n  name: second\n"
    )
    config = parse_epp_config(text)
    assert [(p.instance_name, p.parameters) for p in config.plugins] == [
        ("max-score-picker", {"maxNumOfEndpoints": 2}),
        ("second", {"maxNumOfEndpoints": 2}),
    ]


def test_request_handler_parsers_are_reference_checked() -> None:
    """An undeclared ref may name a parser type (as upstream); anything else fails by name."""
    from kvroute.protocol.parsers import parser_set_for

    ok = parse_epp_config(HEAD + "requestHandler: {parsers: [{pluginRef: anthropic-parser}]}\n")
    assert parser_set_for(ok, {}).names == ("anthropic-parser",)
    ghost = parse_epp_config(HEAD + "requestHandler: {parsers: [{pluginRef: ghost}]}\n", "<t>")
    with pytest.raises(ConfigError, match="'ghost' is neither a declared plugin nor a parser"):
        parser_set_for(ghost, {})


def test_parser_and_request_handler_together_are_rejected() -> None:
    text = HEAD + (
        "plugins: [{type: openai-parser}]\nparser: {pluginRef: openai-parser}\n"
        "requestHandler: {parsers: [{pluginRef: openai-parser}]}\n"
    )
    with pytest.raises(
        ConfigError, match=r"<t>: requestHandler\.parsers: parser and requestHandler"
    ):
        parse_epp_config(text, "<t>")


def test_llm_d_router_api_version_loads_like_the_gie_one() -> None:
    """llm-d-router v0.10 configs say ``apiVersion: llm-d.ai/v1alpha1``; they load unchanged."""
    body = "kind: EndpointPickerConfig\nplugins: [{type: queue-scorer}]\n"
    old = parse_epp_config("apiVersion: inference.networking.x-k8s.io/v1alpha1\n" + body)
    new = parse_epp_config("apiVersion: llm-d.ai/v1alpha1\n" + body)
    assert [p.type for p in new.plugins] == [p.type for p in old.plugins] == ["queue-scorer"]
