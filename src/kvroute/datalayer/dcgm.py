"""``dcgm-data-source`` and ``dcgm-extractor``: GPU utilisation from NVIDIA's DCGM exporter.

The source (a :class:`~kvroute.datalayer.plugins.DataLayerSource`, see
:mod:`kvroute.datalayer.http_source`) GETs ``<scheme>://<endpoint address>:<port><path>``
(upstream defaults ``http``, ``9400``, ``/metrics``) from every endpoint, i.e. a DCGM exporter
running beside the model server (the sidecar layout). Parameters: ``scheme`` (http|https),
``path``, ``port``, ``insecureSkipVerify`` (true), ``interval`` (Go duration, rounded to the
50 ms tick; omitted: every tick) and ``useNodeAddress`` (false). ``useNodeAddress: true`` is the
DaemonSet layout: the exporter runs once per node and is scraped at the endpoint's node address
(the pod's ``status.hostIP``, which Kubernetes discovery records); an endpoint whose node address
is unknown (``--endpoint`` and file discovery carry none) fails its poll with a message saying
so, and its previous value stays.

The extractor reads ``DCGM_FI_DEV_GPU_UTIL`` (percent) and stores the highest value over the
endpoint's GPUs, divided by 100, as the ``GPUUtilization`` attribute (0..1), as upstream. A
sample with a ``pod`` label counts only when the label names the endpoint's pod (the endpoint's
name, or its name without kvroute's ``-rank-<n>`` suffix for data-parallel ranks); samples
without one always count. A page without the metric (or without a sample for the endpoint)
is a failed poll: the previous value stays. It takes no parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field

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
from kvroute.framework.endpoint import split_rank_name
from kvroute.hostport import format_hostport
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


class DcgmDataSource(HttpPollingSource):
    extractor_type = DCGM_EXTRACTOR
    use_node_address = False

    def url(self, endpoint: Endpoint) -> str:
        if not self.use_node_address:
            return super().url(endpoint)
        if not endpoint.node_address:
            raise PollFailed(
                f"useNodeAddress: endpoint {endpoint.name!r} has no node address (only "
                "Kubernetes discovery records a pod's hostIP)"
            )
        assert self.port is not None
        return f"{self.scheme}://{format_hostport(endpoint.node_address, self.port)}{self.path}"

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
        mine = [s.value for s in samples if _is_pod_of(s.labels.get(POD_LABEL), endpoint.name)]
        if not mine:
            raise PollFailed(f"{GPU_UTIL_METRIC} has no sample for pod {endpoint.name!r}")
        return {GPU_UTILIZATION: max(0.0, max(mine)) / 100.0}


def _is_pod_of(pod: str | None, endpoint_name: str) -> bool:
    """Whether a sample's ``pod`` label (None: no label) belongs to the endpoint."""
    if pod is None or pod == endpoint_name:
        return True
    head, rank = split_rank_name(endpoint_name)
    return rank is not None and head == pod


def _source(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> DcgmDataSource:
    params = validate_parameters(DcgmDataSourceParams, name, DCGM_DATA_SOURCE, parameters)
    source = DcgmDataSource(
        DCGM_DATA_SOURCE,
        name,
        scheme=params.scheme,
        path=params.path,
        port=params.port,
        interval=round_interval(params.interval),
        ssl_context=client_ssl(params.insecure_skip_verify),
    )
    source.use_node_address = params.use_node_address
    return source


def _extractor(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> DcgmExtractor:
    if parameters:
        raise PluginValidationError(
            f"plugin {name!r} ({DCGM_EXTRACTOR}): takes no parameters, got {sorted(parameters)}"
        )
    return DcgmExtractor(name)


PLUGINS: Mapping[str, PluginFactory] = {DCGM_DATA_SOURCE: _source, DCGM_EXTRACTOR: _extractor}
