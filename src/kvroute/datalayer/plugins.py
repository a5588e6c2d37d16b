"""Data-layer and parser plugin types named in upstream EndpointPickerConfigs.

``metrics-data-source`` and ``core-metrics-extractor`` configure the metrics scraper; they sit in
a config's ``plugins`` list and its ``dataLayer.sources`` and are never part of a scheduling
profile. ``openai-parser`` and ``passthrough-parser`` name how request bodies are parsed. These
plugins hold validated parameters only: the composition root reads them to build the
:class:`~kvroute.datalayer.scraper.MetricsCollector`, so a bad parameter fails when the config
loads, with the plugin's name, exactly as a scorer's would.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from kvroute.datalayer.mappings import MappingRegistry
from kvroute.datalayer.scraper import MetricsDataSourceParams
from kvroute.datastore.file_discovery import FILE_DISCOVERY, FileDiscoveryParams
from kvroute.errors import ConfigError, PluginValidationError
from kvroute.plugins.base import TypedName
from kvroute.plugins.registry import PluginFactory, PluginHandle

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
    PASSTHROUGH_PARSER,
)


class MetricsDataSource:
    """Where and how to scrape: ``scheme``, ``path``, ``insecureSkipVerify``."""

    def __init__(self, name: str, params: MetricsDataSourceParams) -> None:
        self.typed_name = TypedName(METRICS_DATA_SOURCE, name)
        self.params = params


class CoreMetricsExtractor:
    """Which metric names map to which signals, per engine (``engineConfigs``)."""

    def __init__(self, name: str, raw: Mapping[str, Any], mappings: MappingRegistry) -> None:
        self.typed_name = TypedName(CORE_METRICS_EXTRACTOR, name)
        self.raw = dict(raw)
        self.mappings = mappings


class RequestParser:
    """A named request parser (its type selects the protocol; see kvroute.protocol.parsers)."""

    def __init__(self, type_name: str, name: str) -> None:
        self.typed_name = TypedName(type_name, name)


def _data_source(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> Any:
    try:
        params = MetricsDataSourceParams.model_validate(dict(parameters))
    except ValidationError as exc:
        fields = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise PluginValidationError(
            f"plugin {name!r} ({METRICS_DATA_SOURCE}): parameters.{fields}"
        ) from None
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
    try:
        params = FileDiscoveryParams.model_validate(dict(parameters))
    except ValidationError as exc:
        fields = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise PluginValidationError(
            f"plugin {name!r} ({FILE_DISCOVERY}): parameters.{fields}"
        ) from None
    return FileDiscoveryPlugin(name, params)


def _parser(type_name: str) -> PluginFactory:
    def factory(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> Any:
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
