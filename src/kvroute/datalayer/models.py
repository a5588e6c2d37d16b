"""``models-data-source`` and ``models-data-extractor``: the models each endpoint serves.

The source (a :class:`~kvroute.datalayer.plugins.DataLayerSource`, see
:mod:`kvroute.datalayer.http_source`) GETs ``<scheme>://<endpoint address>:<port><path>`` on
the endpoint's inference port (upstream defaults ``http``, ``/v1/models``) and parses the
OpenAI-compatible list ``{"object": "list", "data": [{"id": ..., "parent": ...}, ...]}``.
Parameters: ``scheme`` (http|https), ``path``, ``insecureSkipVerify`` (true), ``caCertPath``,
``clientCertPath``/``clientKeyPath`` (mTLS, set both) and ``interval`` (Go duration, rounded
to the 50 ms tick; omitted: every tick).

The extractor (no parameters) stores the list as a tuple of :class:`ModelData` under the
attribute key ``/v1/models`` (upstream's ``ModelsAttributeKey``). A page that is not such a
list is a failed poll (the previous value stays).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import Field, field_validator, model_validator

from kvroute.datalayer.http_source import (
    HttpPollingSource,
    HttpSourceParams,
    PollFailed,
    client_ssl,
    round_interval,
)
from kvroute.datastore.endpoint import Endpoint
from kvroute.errors import PluginValidationError
from kvroute.plugins.base import TypedName, validate_parameters
from kvroute.plugins.registry import PluginFactory, PluginHandle

MODELS_DATA_SOURCE = "models-data-source"
MODELS_DATA_EXTRACTOR = "models-data-extractor"
MODELS_ATTRIBUTE = "/v1/models"  # upstream's ModelsAttributeKey


@dataclass(frozen=True, slots=True)
class ModelData:
    """One entry of ``/v1/models`` (upstream's ``ModelData`` fields)."""

    id: str
    object: str = ""
    created: int = 0
    owned_by: str = ""
    parent: str = ""


class ModelsDataSourceParams(HttpSourceParams):
    path: str = "/v1/models"
    ca_cert_path: str = Field("", alias="caCertPath")
    client_cert_path: str = Field("", alias="clientCertPath")
    client_key_path: str = Field("", alias="clientKeyPath")

    @field_validator("ca_cert_path", "client_cert_path", "client_key_path")
    @classmethod
    def _readable(cls, value: str) -> str:
        if value and not os.path.isfile(value):
            raise ValueError(f"no such file {value!r}")
        return value

    @model_validator(mode="after")
    def _cert_pair(self) -> ModelsDataSourceParams:
        if bool(self.client_cert_path) != bool(self.client_key_path):
            raise ValueError("clientCertPath and clientKeyPath must be set together")
        return self


class ModelsDataSource(HttpPollingSource):
    extractor_type = MODELS_DATA_EXTRACTOR

    def parse(self, body: bytes) -> Any:
        try:
            page = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PollFailed(f"/v1/models answer is not JSON: {exc}") from None
        data = page.get("data") if isinstance(page, dict) else None
        if not isinstance(data, list):
            raise PollFailed("/v1/models answer has no 'data' list")
        return tuple(_model(entry) for entry in data)


def _model(entry: object) -> ModelData:
    if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
        raise PollFailed(f"/v1/models entry without a string 'id': {str(entry)[:80]}")

    def text(key: str) -> str:
        value = entry.get(key)
        return value if isinstance(value, str) else ""

    created = entry.get("created")
    return ModelData(
        id=entry["id"],
        object=text("object"),
        created=created if isinstance(created, int) and not isinstance(created, bool) else 0,
        owned_by=text("owned_by"),
        parent=text("parent"),
    )


class ModelsDataExtractor:
    """The parsed ``/v1/models`` list -> the ``/v1/models`` attribute (a tuple of ModelData)."""

    def __init__(self, name: str = MODELS_DATA_EXTRACTOR) -> None:
        self.typed_name = TypedName(MODELS_DATA_EXTRACTOR, name)

    def extract(self, endpoint: Endpoint, payload: Any) -> Mapping[str, object | None]:
        if not isinstance(payload, tuple):
            raise PollFailed("expected the parsed /v1/models list")
        return {MODELS_ATTRIBUTE: payload}


def served_models(endpoint: Endpoint) -> tuple[ModelData, ...] | None:
    """The endpoint's ``/v1/models`` attribute; None when no extractor wrote it yet."""
    value = endpoint.attributes.get(MODELS_ATTRIBUTE)
    return value if isinstance(value, tuple) else None


def _source(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> ModelsDataSource:
    params = validate_parameters(ModelsDataSourceParams, name, MODELS_DATA_SOURCE, parameters)
    return ModelsDataSource(
        MODELS_DATA_SOURCE,
        name,
        scheme=params.scheme,
        path=params.path,
        port=None,  # the endpoint's inference port
        interval=round_interval(params.interval),
        ssl_context=client_ssl(
            params.insecure_skip_verify,
            params.ca_cert_path,
            params.client_cert_path,
            params.client_key_path,
        ),
    )


def _extractor(
    name: str, parameters: Mapping[str, Any], handle: PluginHandle
) -> ModelsDataExtractor:
    if parameters:
        raise PluginValidationError(
            f"plugin {name!r} ({MODELS_DATA_EXTRACTOR}): takes no parameters, "
            f"got {sorted(parameters)}"
        )
    return ModelsDataExtractor(name)


PLUGINS: Mapping[str, PluginFactory] = {
    MODELS_DATA_SOURCE: _source,
    MODELS_DATA_EXTRACTOR: _extractor,
}
