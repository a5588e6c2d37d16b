"""``dcgm-data-source`` and ``dcgm-extractor``: GPU utilisation from NVIDIA's DCGM exporter.

The source (a :class:`~kvroute.datalayer.plugins.DataLayerSource`, see
:mod:`kvroute.datalayer.http_source`) GETs ``<scheme>://<endpoint address>:<port><path>``
(upstream defaults ``http``, ``9400``, ``/metrics``) from every endpoint, i.e. a DCGM exporter
running beside the model server (the sidecar layout). Parameters: ``scheme`` (http|https),
``path``, ``port``, ``insecureSkipVerify`` (true), ``interval`` (Go duration, rounded to the
50 ms tick; omitted: every tick) and ``useNodeAddress`` (false). ``useNodeAddress: true`` (the
DaemonSet layout: scrape the node's IP) is rejected at load: kvroute's endpoints carry no node
address.

The extractor reads ``DCGM_FI_DEV_GPU_UTIL`` (percent) and stores the highest value over the
endpoint's GPUs, divided by 100, as the ``GPUUtilization`` attribute (0..1), as upstream. A
sample with a ``pod`` label counts only when the label equals the endpoint's name; samples
without one always count. A page without the metric (or without a sample for the endpoint)
is a failed poll: the previous value stays. It takes no parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field, field_validator

from kvroute.datalayer.http_source import (
    HttpPollingSource,
    HttpSourceParams,
    PollFailed,
    client_ssl,
    round_interval,
)
from kvroute.datalayer.prometheus import MetricsParseError, SeriesSelector, decode_page
from kvroute.datastore.endpoint import Endpoint
from kvroute.errors import PluginValidationError
from kvroute.plugins.base import TypedName, validate_parameters
from kvroute.plugins.registry import PluginFactory, PluginHandle

DCGM_DATA_SOURCE = "dcgm-data-source"
DCGM_EXTRACTOR = "dcgm-extractor"
GPU_UTIL_METRIC = "DCGM_FI_DEV_GPU_UTIL"
GPU_UTILIZATION = "GPUUtilization"  # the attribute key (upstream's data key name)
POD_LABEL = "pod"


class DcgmDataSourceParams(HttpSourceParams):
    path: str = "/metrics"
    port: int = Field(9400, ge=1, le=65535)
    use_node_address: bool = Field(False, alias="useNodeAddress")

    @field_validator("use_node_address")
    @classmethod
    def _no_node_address(cls, value: bool) -> bool:
        if value:
            raise ValueError(
                "true (scrape the node's DCGM DaemonSet) is not supported: kvroute's endpoints "
                "carry no node address; run the exporter as a sidecar (useNodeAddress: false)"
            )
        return value


class DcgmDataSource(HttpPollingSource):
    extractor_type = DCGM_EXTRACTOR

    def parse(self, body: bytes) -> Any:
        try:
            return decode_page(body)
        except MetricsParseError as exc:
            raise PollFailed(str(exc)) from None


class DcgmExtractor:
    """``DCGM_FI_DEV_GPU_UTIL`` -> ``GPUUtilization`` (max over the endpoint's GPUs, 0..1)."""

    def __init__(self, name: str = DCGM_EXTRACTOR) -> None:
        self.typed_name = TypedName(DCGM_EXTRACTOR, name)
        self._selector = SeriesSelector([GPU_UTIL_METRIC])

    def extract(self, endpoint: Endpoint, payload: Any) -> Mapping[str, object | None]:
        try:
            samples = self._selector.parse(payload).get(GPU_UTIL_METRIC, [])
        except MetricsParseError as exc:
            raise PollFailed(str(exc)) from None
        if not samples:
            raise PollFailed(f"metric {GPU_UTIL_METRIC} not found in the DCGM page")
        mine = [s.value for s in samples if s.labels.get(POD_LABEL, endpoint.name) == endpoint.name]
        if not mine:
            raise PollFailed(f"{GPU_UTIL_METRIC} has no sample for pod {endpoint.name!r}")
        return {GPU_UTILIZATION: max(0.0, max(mine)) / 100.0}


def _source(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> DcgmDataSource:
    params = validate_parameters(DcgmDataSourceParams, name, DCGM_DATA_SOURCE, parameters)
    return DcgmDataSource(
        DCGM_DATA_SOURCE,
        name,
        scheme=params.scheme,
        path=params.path,
        port=params.port,
        interval=round_interval(params.interval),
        ssl_context=client_ssl(params.insecure_skip_verify),
    )


def _extractor(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> DcgmExtractor:
    if parameters:
        raise PluginValidationError(
            f"plugin {name!r} ({DCGM_EXTRACTOR}): takes no parameters, got {sorted(parameters)}"
        )
    return DcgmExtractor(name)


PLUGINS: Mapping[str, PluginFactory] = {DCGM_DATA_SOURCE: _source, DCGM_EXTRACTOR: _extractor}
