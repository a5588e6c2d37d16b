"""The upstream ``EndpointPickerConfig`` YAML: model, strict loader, static defaults, built-ins.

Format (``apix/config/v1alpha1``)::

    apiVersion: inference.networking.x-k8s.io/v1alpha1
    kind: EndpointPickerConfig
    featureGates: [flowControl]               # flowControl | haPopulateNonLeaderDatastore[=false]
    plugins: [{name, type, parameters}]       # name defaults to type
    schedulingProfiles: [{name, plugins: [{pluginRef, weight}]}]
    saturationDetector: {pluginRef}
    dataLayer: {sources: [{pluginRef, extractors: [{pluginRef}]}]}
    parser: {pluginRef}                       # deprecated: requestHandler.parsers wins
    requestHandler: {parsers: [{pluginRef}]}  # undeclared refs may name a parser type
    flowControl: {enabled, maxBytes, maxRequests, defaultRequestTTL, noEndpointRequestTTL,
                  saturationDetector, usageLimitPolicyPluginRef, defaultPriorityBand,
                  defaultNegativePriorityBand, priorityBands}   # see config/flow_control.py

Decoding is strict, as upstream's: unknown fields and repeated keys are errors, and every error
names the source and the field path (``epp.yaml: schedulingProfiles[0].plugins[1].weight: ...``).

This module applies the *static* defaulting rules (a plugin's ``name`` defaults to its ``type``;
plugin and profile names are unique; every ``pluginRef`` names a declared plugin). The rules that
depend on what a plugin *is* (a default profile with every filter/scorer/picker, an injected
``single-profile-handler`` and ``max-score-picker``, scorer weight 1, one profile handler at
most, registered types, parameter validation) need the plugins built and live in
:mod:`kvroute.scheduling.builder`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from kvroute.config.flow_control import FLOW_CONTROL_DEFAULT_TYPES, FlowControlSpec
from kvroute.config.strict_yaml import load_documents
from kvroute.config.yaml_errors import format_validation_error
from kvroute.errors import ConfigError
from kvroute.plugins.registry import PluginRegistry

API_VERSION = "inference.networking.x-k8s.io/v1alpha1"
# llm-d-router (v0.10) writes its configs under its own group; both spellings load the same.
LLMD_API_VERSION = "llm-d.ai/v1alpha1"
KIND = "EndpointPickerConfig"
# llm-d-router's gates and their defaults (``NAME`` or ``NAME=true|false`` in ``featureGates``).
FEATURE_GATE_DEFAULTS: dict[str, bool] = {
    "flowControl": False,
    "haPopulateNonLeaderDatastore": True,
}
KNOWN_FEATURE_GATES = frozenset(FEATURE_GATE_DEFAULTS)
# Gate settings kvroute cannot honour, each with the reason given at load.
_REFUSED_GATES: dict[tuple[str, bool], str] = {
    ("haPopulateNonLeaderDatastore", False): (
        "kvroute standbys always keep their datastore populated (a failover waits for the "
        "lease only, never for a relist); remove the gate"
    ),
}
# GIE v1.5 gates that llm-d-router removed, with what to write instead.
_REMOVED_GATES: dict[str, str] = {
    "dataLayer": "removed upstream; kvroute's data layer always runs (configure dataLayer.sources)",
    "enableLegacyMetrics": (
        "removed upstream; kvroute exports the current metric names only (docs/metrics.md)"
    ),
}
PREFIX_SCORER_TYPE = "prefix-cache-scorer"
# Plugins the loader may inject (name == type), so a config may reference them undeclared.
SYSTEM_DEFAULT_PLUGINS = frozenset(
    {"max-score-picker", "single-profile-handler", "utilization-detector"}
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class PluginSpec(_Strict):
    name: str | None = Field(default=None, min_length=1)
    type: str = Field(min_length=1)
    parameters: dict[str, Any] | None = None

    @property
    def instance_name(self) -> str:
        return self.name or self.type


class ProfilePluginRef(_Strict):
    plugin_ref: str = Field(alias="pluginRef", min_length=1)
    weight: float | None = Field(default=None, ge=0)


class SchedulingProfileSpec(_Strict):
    name: str = Field(min_length=1)
    plugins: list[ProfilePluginRef] = Field(default_factory=list)


class PluginRef(_Strict):
    plugin_ref: str = Field(alias="pluginRef", min_length=1)


class DataLayerSourceSpec(_Strict):
    plugin_ref: str = Field(alias="pluginRef", min_length=1)
    extractors: list[PluginRef] = Field(default_factory=list)


class DataLayerSpec(_Strict):
    sources: list[DataLayerSourceSpec] = Field(default_factory=list)
    # file-discovery instead of Kubernetes / --endpoint (kvroute.datastore.file_discovery)
    discovery: PluginRef | None = None


class RequestHandlerSpec(_Strict):
    """``requestHandler``: the ordered ``parsers`` (see :mod:`kvroute.protocol.parsers`)."""

    parsers: list[PluginRef] = Field(default_factory=list)


def parse_feature_gates(gates: list[str]) -> dict[str, bool]:
    """``["flowControl", "haPopulateNonLeaderDatastore=false"]`` -> ``{name: value}``.

    Raises :class:`ValueError` naming every unknown, removed or refused gate and why.
    """
    values: dict[str, bool] = {}
    unknown: list[str] = []
    problems: list[str] = []
    for entry in gates:
        name, sep, raw = entry.partition("=")
        name = name.strip()
        value = True
        if sep:
            low = raw.strip().lower()
            if low not in ("true", "false"):
                problems.append(f"{entry!r}: expected {name}=true or {name}=false")
                continue
            value = low == "true"
        if name in _REMOVED_GATES:
            problems.append(f"{name}: {_REMOVED_GATES[name]}")
        elif name not in FEATURE_GATE_DEFAULTS:
            unknown.append(name)
        elif (name, value) in _REFUSED_GATES:
            problems.append(f"{entry}: {_REFUSED_GATES[(name, value)]}")
        else:
            values[name] = value
    if unknown:
        known = ", ".join(sorted(FEATURE_GATE_DEFAULTS))
        problems.insert(0, f"unknown feature gate(s) {', '.join(unknown)} (known: {known})")
    if problems:
        raise ValueError("; ".join(problems))
    return values


class EndpointPickerConfig(_Strict):
    api_version: Literal["inference.networking.x-k8s.io/v1alpha1", "llm-d.ai/v1alpha1"] = Field(
        alias="apiVersion"
    )
    kind: Literal["EndpointPickerConfig"]
    feature_gates: list[str] = Field(default_factory=list, alias="featureGates")
    plugins: list[PluginSpec] = Field(default_factory=list)
    scheduling_profiles: list[SchedulingProfileSpec] = Field(
        default_factory=list, alias="schedulingProfiles"
    )
    saturation_detector: PluginRef | None = Field(default=None, alias="saturationDetector")
    data_layer: DataLayerSpec | None = Field(default=None, alias="dataLayer")
    parser: PluginRef | None = None  # deprecated upstream: requestHandler.parsers wins
    request_handler: RequestHandlerSpec | None = Field(default=None, alias="requestHandler")
    flow_control: FlowControlSpec | None = Field(default=None, alias="flowControl")

    @field_validator("feature_gates")
    @classmethod
    def _gates(cls, gates: list[str]) -> list[str]:
        parse_feature_gates(gates)
        return gates

    def gate(self, name: str) -> bool:
        """Whether feature gate ``name`` is on (its default unless ``featureGates`` sets it)."""
        return parse_feature_gates(self.feature_gates).get(name, FEATURE_GATE_DEFAULTS[name])

    def to_yaml_dict(self) -> dict[str, Any]:
        """The config as upstream YAML keys (for dry-run output and docs)."""
        return self.model_dump(by_alias=True, exclude_none=True, exclude_defaults=False)


def parse_epp_config(text: str, source: str = "<config-text>") -> EndpointPickerConfig:
    """Parse one EndpointPickerConfig document and apply the static defaults.

    Raises :class:`~kvroute.errors.ConfigError` naming ``source`` and the field path; all
    problems found are reported together, one per line.
    """
    docs = load_documents(text, source)
    if not docs:
        raise ConfigError(f"{source}: empty document (expected an {KIND})")
    if len(docs) > 1:
        raise ConfigError(f"{source}: expected one {KIND} document, found {len(docs)}")
    doc = docs[0]
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: expected a mapping, got {type(doc).__name__}")
    try:
        config = EndpointPickerConfig.model_validate(doc)
    except ValidationError as exc:
        raise ConfigError(
            "\n".join(f"{source}: {line}" for line in format_validation_error(exc))
        ) from None
    return apply_static_defaults(config, source)


def load_epp_config(path: Path) -> EndpointPickerConfig:
    """Read and parse ``path`` (``--config-file``)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return parse_epp_config(text, str(path))


def apply_static_defaults(config: EndpointPickerConfig, source: str) -> EndpointPickerConfig:
    """Name defaults and reference checks that need no plugin instances (returns a copy).

    A reference to an undeclared *system default* plugin (``max-score-picker``,
    ``single-profile-handler``, ``utilization-detector``) declares it with default parameters,
    as upstream's system defaults do: its own default config lists ``{pluginRef:
    max-score-picker}`` in the profile without declaring the plugin.
    """
    errors: list[str] = []
    plugins = [p.model_copy(update={"name": p.instance_name}) for p in config.plugins]
    seen: dict[str, int] = {}
    for i, p in enumerate(plugins):
        name = p.instance_name
        if name in seen:
            errors.append(
                f"plugins[{i}].name: duplicate plugin name {name!r} (also plugins[{seen[name]}])"
            )
        seen.setdefault(name, i)
    referenced = [r.plugin_ref for prof in config.scheduling_profiles for r in prof.plugins]
    if config.saturation_detector is not None:
        referenced.append(config.saturation_detector.plugin_ref)
    for name in referenced:
        if name in SYSTEM_DEFAULT_PLUGINS and name not in seen:
            seen[name] = len(plugins)
            plugins.append(PluginSpec(name=name, type=name))
    profile_names: set[str] = set()
    for i, prof in enumerate(config.scheduling_profiles):
        if prof.name in profile_names:
            errors.append(f"schedulingProfiles[{i}].name: duplicate profile name {prof.name!r}")
        profile_names.add(prof.name)
        for j, ref in enumerate(prof.plugins):
            if ref.plugin_ref not in seen:
                errors.append(
                    f"schedulingProfiles[{i}].plugins[{j}].pluginRef: "
                    f"no plugin named {ref.plugin_ref!r}"
                )
    refs: list[tuple[str, str]] = []
    if config.saturation_detector is not None:
        refs.append(("saturationDetector.pluginRef", config.saturation_detector.plugin_ref))
    if config.parser is not None:
        refs.append(("parser.pluginRef", config.parser.plugin_ref))
    # requestHandler.parsers may name a parser type without declaring it (as upstream);
    # kvroute.protocol.parsers.parser_set_for resolves and checks each reference.
    if config.request_handler is not None and config.parser is not None:
        errors.append(
            "requestHandler.parsers: parser and requestHandler.parsers are the old and new "
            "spelling of one setting; write only one"
        )
    if config.data_layer is not None:
        if config.data_layer.discovery is not None:
            refs.append(("dataLayer.discovery.pluginRef", config.data_layer.discovery.plugin_ref))
        for i, src in enumerate(config.data_layer.sources):
            refs.append((f"dataLayer.sources[{i}].pluginRef", src.plugin_ref))
            for j, ext in enumerate(src.extractors):
                refs.append((f"dataLayer.sources[{i}].extractors[{j}].pluginRef", ext.plugin_ref))
    errors.extend(f"{path}: no plugin named {ref!r}" for path, ref in refs if ref not in seen)
    fc = config.flow_control
    if fc is not None:  # flow-control refs may name a built-in policy type undeclared
        errors.extend(
            f"{path}: no plugin named {ref!r}"
            for path, ref in fc.plugin_refs()
            if ref not in seen and ref not in FLOW_CONTROL_DEFAULT_TYPES
        )
    if errors:
        raise ConfigError("\n".join(f"{source}: {e}" for e in errors))
    return config.model_copy(update={"plugins": plugins})


def default_config_text(registry: PluginRegistry) -> str:
    """kvroute's default profile (``--profile default``): see ``KVROUTE_DEFAULT_CONFIG_TEXT``.

    Falls back to upstream's when a plugin it needs is not registered (a trimmed registry).
    """
    if all(t in registry for t in KVROUTE_DEFAULT_TYPES):
        return KVROUTE_DEFAULT_CONFIG_TEXT
    return upstream_config_text(registry)


def upstream_config_text(registry: PluginRegistry) -> str:
    """Upstream's default profile: queue 2, kv-cache 2, prefix-cache 3 (when registered), max-score.

    ``prefix-cache-scorer`` is included only when its type is registered, so the default switches
    it on as soon as the prefix-cache plugin module is listed in ``BUILTIN_PLUGIN_MODULES``.
    """
    prefix = PREFIX_SCORER_TYPE in registry
    plugins = ["queue-scorer", "kv-cache-utilization-scorer"]
    refs = [
        "- {pluginRef: queue-scorer, weight: 2}",
        "- {pluginRef: kv-cache-utilization-scorer, weight: 2}",
    ]
    if prefix:
        plugins.append(PREFIX_SCORER_TYPE)
        refs.append(f"- {{pluginRef: {PREFIX_SCORER_TYPE}, weight: 3}}")
    plugins.append("max-score-picker")
    refs.append("- {pluginRef: max-score-picker}")
    return "\n".join(
        [
            f"apiVersion: {API_VERSION}",
            f"kind: {KIND}",
            "plugins:",
            *(f"- type: {t}" for t in plugins),
            "schedulingProfiles:",
            "- name: default",
            "  plugins:",
            *(f"  {r}" for r in refs),
            "",
        ]
    )


DECISION_TREE_CONFIG_TEXT = f"""\
apiVersion: {API_VERSION}
kind: {KIND}
plugins:
- type: decision-tree-filter
- type: random-picker
schedulingProfiles:
- name: decision-tree
  plugins:
  - {{pluginRef: decision-tree-filter}}
  - {{pluginRef: random-picker}}
saturationDetector:
  pluginRef: decision-tree-filter
"""

# kvroute's default: every signal that helps on some traffic and is neutral where it does not
# (docs/benchmarks.md, "Scheduler v2" has the measurements behind the weights).
KVROUTE_DEFAULT_CONFIG_TEXT = f"""\
apiVersion: {API_VERSION}
kind: {KIND}
plugins:
- type: prefix-cache-scorer
- type: lora-affinity-scorer
  parameters: {{neutralUnknownModels: true}}
- type: session-affinity-scorer
- type: mm-embeddings-cache-scorer
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: active-request-scorer
- type: token-load-scorer
  parameters: {{normalize: true}}
- type: prefill-load-scorer
  parameters: {{prefixHitThreshold: 0.5, prefixHitMargin: 0.15, prefixHitMarginScope: all}}
- type: max-score-picker
  parameters: {{tieTolerance: 0.05}}
schedulingProfiles:
- name: default
  plugins:
  - {{pluginRef: prefix-cache-scorer, weight: 3}}
  - {{pluginRef: lora-affinity-scorer, weight: 8}}
  - {{pluginRef: session-affinity-scorer, weight: 2}}
  - {{pluginRef: mm-embeddings-cache-scorer, weight: 6}}
  - {{pluginRef: queue-scorer, weight: 1}}
  - {{pluginRef: kv-cache-utilization-scorer, weight: 1}}
  - {{pluginRef: active-request-scorer, weight: 2}}
  - {{pluginRef: token-load-scorer, weight: 1}}
  - {{pluginRef: prefill-load-scorer, weight: 2}}
  - {{pluginRef: max-score-picker}}
"""
KVROUTE_DEFAULT_TYPES = (
    "prefix-cache-scorer",
    "lora-affinity-scorer",
    "session-affinity-scorer",
    "mm-embeddings-cache-scorer",
    "queue-scorer",
    "kv-cache-utilization-scorer",
    "active-request-scorer",
    "token-load-scorer",
    "prefill-load-scorer",
    "max-score-picker",
)

BUILTIN_PROFILES = ("default", "upstream", "decision-tree")


def builtin_epp_config(name: str, registry: PluginRegistry) -> EndpointPickerConfig:
    """The config behind ``--profile default|upstream|decision-tree`` (no ``--config``)."""
    if name == "default":
        return parse_epp_config(default_config_text(registry), "<default config>")
    if name == "upstream":
        return parse_epp_config(upstream_config_text(registry), "<upstream config>")
    if name == "decision-tree":
        return parse_epp_config(DECISION_TREE_CONFIG_TEXT, "<decision-tree config>")
    raise ConfigError(
        f"unknown built-in profile {name!r} (built-in: {', '.join(BUILTIN_PROFILES)})"
    )
