"""Data-layer and parser plugin types named in upstream EndpointPickerConfigs.

``metrics-data-source`` and ``core-metrics-extractor`` configure the metrics scraper; they sit in
a config's ``plugins`` list and its ``dataLayer.sources`` and are never part of a scheduling
profile. ``openai-parser`` names how request bodies are parsed. These plugins hold validated
parameters only: :func:`data_layer_setup` resolves the config's ``dataLayer`` section to the
source and extractor the :class:`~kvroute.datalayer.scraper.MetricsCollector` runs with, so a
bad parameter or an unsupported layout fails when the config loads, naming the key.

What kvroute runs, and what it rejects (by name, at load):

* ``dataLayer.sources``: at most one ``metrics-data-source`` with at most one
  ``core-metrics-extractor``; the listed source's ``scheme``/``path``/``insecureSkipVerify`` and
  the listed extractor's ``engineConfigs`` are what the scraper uses (not listed: the built-in
  defaults, unless a listed source ``replaces_metrics``). Every other listed source is a plugin
  implementing :class:`DataLayerSource` (its own polling or notifications, run through the
  plugin lifecycle); it validates the extractors listed under it. A source or extractor of a
  type that is neither, two metrics sources, or a declared source/extractor (a core-metrics or a
  polling source's extractor) that the listed sources leave out are errors. Without
  ``dataLayer``, a single declared ``metrics-data-source``/``core-metrics-extractor`` is used
  (two of either are ambiguous: an error), else the built-in defaults; a declared
  :class:`DataLayerSource` or polling extractor must be listed.
* a plugin's required endpoint attributes (:mod:`kvroute.datalayer.dependencies`) must be
  produced by an extractor listed in ``dataLayer.sources`` (upstream's missing-producer error).
* ``parser`` / ``requestHandler.parsers``: only ``openai-parser`` (kvroute parses every body as
  OpenAI). ``passthrough-parser`` (route by load only, body untouched) is rejected: kvroute's
  director needs the parsed model name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from kvroute.datalayer.dependencies import missing_producers
from kvroute.datalayer.http_source import PollingExtractor
from kvroute.datalayer.mappings import MappingRegistry
from kvroute.datalayer.scraper import MetricsCollector, MetricsDataSourceParams
from kvroute.datastore.file_discovery import FILE_DISCOVERY, FileDiscoveryParams
from kvroute.errors import ConfigError, PluginValidationError
from kvroute.plugins.base import Plugin, TypedName, validate_parameters
from kvroute.plugins.registry import PluginFactory, PluginHandle
from kvroute.protocol.media import MediaOptions

if TYPE_CHECKING:
    from kvroute.config.epp_config import EndpointPickerConfig
    from kvroute.datastore.store import Datastore

METRICS_DATA_SOURCE = "metrics-data-source"
CORE_METRICS_EXTRACTOR = "core-metrics-extractor"
OPENAI_PARSER = "openai-parser"
PASSTHROUGH_PARSER = "passthrough-parser"
# Every parser type kvroute implements (kvroute.protocol.parsers), registered so a config may
# declare them in ``plugins``; requestHandler.parsers picks among the declared ones.
PARSER_TYPES = (
    OPENAI_PARSER,
    "anthropic-parser",
    "vllmhttp-parser",
    "sglanghttp-parser",
    "vllmgrpc-parser",
    "vertexai-parser",
    PASSTHROUGH_PARSER,
)


@runtime_checkable
class DataLayerSource(Plugin, Protocol):
    """A ``dataLayer.sources`` entry other than ``metrics-data-source`` (dcgm, models, ...).

    The plugin collects through the plugin lifecycle (:mod:`kvroute.plugins.lifecycle`:
    ``attach(datastore)`` and ``run_background()``) and writes what its extractors produce with
    ``Datastore.set_attributes``. ``bind_extractors`` receives the plugins listed under it in
    ``dataLayer.sources[i].extractors`` when the config loads (each resolution passes the whole
    list again: keep the last one, do not append); it returns one message per extractor it
    cannot run (e.g. ``"is a core-metrics-extractor, expected dcgm-extractor"``), which the
    load reports under that extractor's path. ``replaces_metrics`` is True for a source that
    stands in for ``metrics-data-source`` (the built-in scraper then does not run).
    """

    replaces_metrics: bool

    def bind_extractors(self, extractors: Sequence[Plugin]) -> list[str]: ...


class MetricsDataSource:
    """Where and how to scrape: ``scheme``, ``path``, ``insecureSkipVerify``."""

    def __init__(self, name: str, params: MetricsDataSourceParams) -> None:
        self.typed_name = TypedName(METRICS_DATA_SOURCE, name)
        self.params = params

    @property
    def scrape_params(self) -> MetricsDataSourceParams:
        return self.params


class CoreMetricsExtractor:
    """Which metric names map to which signals, per engine (``engineConfigs``)."""

    def __init__(self, name: str, raw: Mapping[str, Any], mappings: MappingRegistry) -> None:
        self.typed_name = TypedName(CORE_METRICS_EXTRACTOR, name)
        self.raw = dict(raw)
        self.mappings = mappings


class RequestParser:
    """A named request parser (its type selects the protocol; see kvroute.protocol.parsers).

    ``media`` holds the ``openai-parser`` multimodal parameters (``maxMediaItemBytes``,
    ``mediaTokens``; see :mod:`kvroute.protocol.media`); other parser types take none.
    """

    def __init__(self, type_name: str, name: str, media: MediaOptions | None = None) -> None:
        self.typed_name = TypedName(type_name, name)
        self.media = media


def _data_source(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> Any:
    params = validate_parameters(MetricsDataSourceParams, name, METRICS_DATA_SOURCE, parameters)
    return MetricsDataSource(name, params)


def _extractor(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> Any:
    try:
        mappings = MappingRegistry.from_params(parameters)
    except ConfigError as exc:
        raise PluginValidationError(
            f"plugin {name!r} ({CORE_METRICS_EXTRACTOR}): parameters: {exc.message}"
        ) from None
    return CoreMetricsExtractor(name, parameters, mappings)


class FileDiscoveryPlugin:
    """``file-discovery``: validated parameters; the app builds the endpoint source from them."""

    def __init__(self, name: str, params: FileDiscoveryParams) -> None:
        self.typed_name = TypedName(FILE_DISCOVERY, name)
        self.params = params


def _file_discovery(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> Any:
    return FileDiscoveryPlugin(
        name, validate_parameters(FileDiscoveryParams, name, FILE_DISCOVERY, parameters)
    )


def _parser(type_name: str) -> PluginFactory:
    def factory(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> Any:
        if type_name == OPENAI_PARSER:
            media = validate_parameters(MediaOptions, name, type_name, parameters)
            return RequestParser(type_name, name, media)
        if parameters:
            raise PluginValidationError(
                f"plugin {name!r} ({type_name}): takes no parameters, got {sorted(parameters)}"
            )
        return RequestParser(type_name, name)

    return factory


PLUGINS: Mapping[str, PluginFactory] = {
    METRICS_DATA_SOURCE: _data_source,
    CORE_METRICS_EXTRACTOR: _extractor,
    FILE_DISCOVERY: _file_discovery,
    **{name: _parser(name) for name in PARSER_TYPES},
}


@dataclass(frozen=True, slots=True)
class DataLayerSetup:
    """The metrics source and extractor the config's data layer resolved to (None: defaults)."""

    source: MetricsDataSource | None = None
    extractor: CoreMetricsExtractor | None = None
    # the other listed sources, in config order (they run through the plugin lifecycle)
    others: tuple[DataLayerSource, ...] = ()

    @property
    def runs_metrics(self) -> bool:
        """False when a listed source stands in for the built-in metrics scraper."""
        return not any(o.replaces_metrics for o in self.others)

    @property
    def mappings(self) -> MappingRegistry:
        return self.extractor.mappings if self.extractor else MappingRegistry.from_params(None)

    def collector(self, datastore: Datastore, interval: float) -> MetricsCollector:
        """The scraper, polling every ``interval`` seconds with this source and extractor."""
        if self.source is None:
            return MetricsCollector(datastore, self.mappings, interval)
        params = self.source.params
        return MetricsCollector(
            datastore,
            self.mappings,
            interval,
            scheme=params.scheme,
            path=params.path,
            port=params.port,
            insecure_skip_verify=params.insecure_skip_verify,
        )


def _of_type(plugins: Mapping[str, Plugin], cls: type[Any]) -> list[str]:
    return [name for name, p in plugins.items() if isinstance(p, cls)]


def _describe(plugins: Mapping[str, Plugin], name: str) -> str:
    plugin = plugins.get(name)
    return f"plugin {name!r} ({plugin.typed_name.type})" if plugin else f"plugin {name!r}"


def data_layer_setup(
    config: EndpointPickerConfig, plugins: Mapping[str, Plugin], source: str = "<config>"
) -> DataLayerSetup:
    """Resolve ``dataLayer`` (see the module docstring) or raise a ConfigError naming the key."""
    errors: list[str] = []
    declared_sources = _of_type(plugins, MetricsDataSource)
    declared_extractors = _of_type(plugins, CoreMetricsExtractor)
    declared_others = [n for n, p in plugins.items() if isinstance(p, DataLayerSource)]
    # extractors of a polling source (dcgm, models, multicluster): they run only when listed
    declared_polling = [n for n, p in plugins.items() if isinstance(p, PollingExtractor)]
    specs = config.data_layer.sources if config.data_layer is not None else []
    if not specs:
        for kind, names in (
            (METRICS_DATA_SOURCE, declared_sources),
            (CORE_METRICS_EXTRACTOR, declared_extractors),
        ):
            if len(names) > 1:
                errors.append(
                    f"plugins: {len(names)} {kind} plugins ({', '.join(names)}) and no "
                    "dataLayer.sources to say which one to use"
                )
        errors.extend(
            f"plugins: {_describe(plugins, name)} is a data source: list it in "
            "dataLayer.sources (with its extractors) or remove it"
            for name in declared_others
        )
        errors.extend(
            f"plugins: {_describe(plugins, name)} is an extractor: list it under its source "
            "in dataLayer.sources or remove it"
            for name in declared_polling
        )
        errors.extend(missing_producers(plugins, ()))  # no source lists an extractor
        _raise(errors, source)
        return DataLayerSetup(
            source=_first(plugins, declared_sources, MetricsDataSource),
            extractor=_first(plugins, declared_extractors, CoreMetricsExtractor),
        )
    chosen: MetricsDataSource | None = None
    extractor: CoreMetricsExtractor | None = None
    others: list[DataLayerSource] = []
    for i, spec in enumerate(specs):
        found_source = plugins.get(spec.plugin_ref)
        path = f"dataLayer.sources[{i}]"
        if isinstance(found_source, MetricsDataSource):
            if chosen is not None:
                errors.append(
                    f"{path}.pluginRef: kvroute runs one {METRICS_DATA_SOURCE}, and "
                    f"{chosen.typed_name.name!r} is listed already"
                )
                continue
            chosen = found_source
            if len(spec.extractors) > 1:
                errors.append(
                    f"{path}.extractors: kvroute runs one {CORE_METRICS_EXTRACTOR}, "
                    f"got {len(spec.extractors)}"
                )
            for j, ref in enumerate(spec.extractors):
                found = plugins.get(ref.plugin_ref)
                if isinstance(found, CoreMetricsExtractor):
                    extractor = extractor or found
                else:
                    errors.append(
                        f"{path}.extractors[{j}].pluginRef: "
                        f"{_describe(plugins, ref.plugin_ref)} is not a {CORE_METRICS_EXTRACTOR} "
                        f"(supported extractors: {CORE_METRICS_EXTRACTOR})"
                    )
        elif isinstance(found_source, DataLayerSource):
            others.append(found_source)
            bound = [plugins[r.plugin_ref] for r in spec.extractors if r.plugin_ref in plugins]
            missing = [r.plugin_ref for r in spec.extractors if r.plugin_ref not in plugins]
            if not missing:  # an unknown name is reported by the config's reference check
                errors.extend(
                    f"{path}.extractors: {problem}"
                    for problem in found_source.bind_extractors(bound)
                )
        else:
            errors.append(
                f"{path}.pluginRef: {_describe(plugins, spec.plugin_ref)} is not a data source"
            )
    listed = {s.plugin_ref for s in specs} | {e.plugin_ref for s in specs for e in s.extractors}
    for name in declared_sources + declared_extractors + declared_others + declared_polling:
        if name not in listed:
            errors.append(
                f"plugins: {_describe(plugins, name)} is not listed in dataLayer.sources, "
                "so it would never run; list it or remove it"
            )
    errors.extend(missing_producers(plugins, [e.plugin_ref for s in specs for e in s.extractors]))
    _raise(errors, source)
    return DataLayerSetup(source=chosen, extractor=extractor, others=tuple(others))


def _first(plugins: Mapping[str, Plugin], names: list[str], cls: type[Any]) -> Any:
    found = plugins[names[0]] if names else None
    return found if isinstance(found, cls) else None


def _raise(errors: list[str], source: str) -> None:
    if errors:
        raise ConfigError("\n".join(f"{source}: {e}" for e in errors))
