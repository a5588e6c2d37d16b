"""Multi-cluster data layer (Alpha upstream): peer clusters as endpoints, pool metrics on them.

A cluster-scoped EPP routes between whole clusters: each endpoint is a peer cluster's gateway,
and what matters about it is its pool's aggregate load, not one pod's. Three plugins:

* ``multicluster-file-discovery``: the peer clusters from a watched file, the
  ``file-discovery`` format and watcher (:mod:`kvroute.datastore.file_discovery`) except that
  ``address`` may be a host name or an IPv6 literal. Parameters ``path`` (required) and
  ``watchFile`` (false); selected by ``dataLayer.discovery``.
* ``multicluster-metrics-data-source`` (a :class:`~kvroute.datalayer.plugins.DataLayerSource`
  that ``replaces_metrics``: the per-pod scraper does not run, the endpoints are not model
  servers) GETs ``<scheme>://<metrics host><path>`` from every cluster, where the metrics host is
  the endpoint's ``address:port`` unless its labels say otherwise: ``metricsAddress`` (and
  ``metricsPort``, default the endpoint's port) for a peer whose EPP serves its pool metrics
  elsewhere than its gateway. What it reads there is the peer EPP's own ``/metrics`` page, whose
  pool gauges ``llm_d_epp_average_kv_cache_utilization`` and ``llm_d_epp_average_queue_size``
  (kvroute's EPP serves them too) summarise the cluster. Parameters: ``scheme`` (``https``:
  the scrape crosses a trust boundary, unlike the pod source's ``http``), ``path``
  (``/metrics``), ``insecureSkipVerify`` (false: the peer's certificate is verified),
  ``caCertPath`` (a PEM bundle to verify it with instead of the system roots),
  ``clientCertPath``/``clientKeyPath`` (mTLS, set both), ``interval`` (Go duration, rounded to
  the 50 ms tick). A page is read up to 8 MiB; a larger one is a failed poll (upstream truncates
  it), so a broken or hostile peer cannot exhaust memory. Each scrape is bounded by 80 % of the
  interval but at least ``MIN_TIMEOUT_S`` (a peer cluster is further away than a pod).
  kvroute addition: a successful scrape also becomes the cluster's ``EndpointMetrics``
  (``kv_cache_usage`` = the pool's KV-cache utilization, ``waiting_queue_size`` = its average
  queue, rounded; stamped now; only while both attributes are set), so the saturation detector
  (``utilization-detector``: a cluster whose average pod queue or KV use crosses its thresholds
  is saturated) and flow control see clusters as they see pods. Upstream leaves a cluster's
  metrics empty, so its detector holds every cluster stale, i.e. saturated (it fails closed).
* ``multicluster-metrics-extractor``: the two gauges -> the endpoint attributes
  ``llm-d.ai/multicluster-kv-cache-utilization`` and ``llm-d.ai/multicluster-queue-size``
  (upstream's keys), read by the ``multicluster-*`` scorers. Parameters
  ``kvCacheUtilizationMetric`` and ``queueSizeMetric``: a metric spec ``name`` or
  ``name{label="value",...}`` (defaults, also for an empty value: the two gauges above); of
  several matching series the one with the latest timestamp counts. A gauge missing from the
  page leaves its attribute as it was (the other is still written); a page with neither is a
  failed poll. A NaN or infinite value (a pool without ready pods averages to NaN) clears the
  attribute: that scorer leaves the cluster unscored, and its metrics go stale.

Differences from upstream, on purpose: the TLS files (``caCertPath``, the client pair) are read
when the source first scrapes, not when the config loads, so the config can be checked (``kvroute
schedule``, a CI job) where the certificates are not mounted; until they can be read every
scrape fails with a message naming the parameter (logged at ERROR once per distinct problem),
and they are retried on the next tick, so a certificate mounted late is picked up. Upstream
decodes a ``port`` parameter for this source and ignores it; kvroute rejects it by name (the
``metricsPort`` label is how a peer moves its metrics port).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import ssl
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import aiohttp
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from kvroute.datalayer.http_source import (
    HttpPollingSource,
    HttpSourceParams,
    PollFailed,
    round_interval,
)
from kvroute.datalayer.mappings import MetricSpec
from kvroute.datalayer.prometheus import MetricsParseError, Sample, SeriesSelector, decode_page
from kvroute.datastore.endpoint import Endpoint
from kvroute.datastore.file_discovery import MULTICLUSTER_FILE_DISCOVERY, FileDiscoveryParams
from kvroute.plugins.base import TypedName, validate_parameters
from kvroute.plugins.registry import PluginFactory, PluginHandle

log = logging.getLogger(__name__)

MULTICLUSTER_METRICS_DATA_SOURCE = "multicluster-metrics-data-source"
MULTICLUSTER_METRICS_EXTRACTOR = "multicluster-metrics-extractor"
# The attribute keys the extractor writes and the multicluster scorers read (upstream's names).
KV_CACHE_UTILIZATION_ATTRIBUTE = "llm-d.ai/multicluster-kv-cache-utilization"
QUEUE_SIZE_ATTRIBUTE = "llm-d.ai/multicluster-queue-size"
DEFAULT_KV_CACHE_METRIC = "llm_d_epp_average_kv_cache_utilization"
DEFAULT_QUEUE_SIZE_METRIC = "llm_d_epp_average_queue_size"
METRICS_ADDRESS_LABEL = "metricsAddress"
METRICS_PORT_LABEL = "metricsPort"
MAX_RESPONSE_BYTES = 8 << 20
MIN_TIMEOUT_S = 1.0
_CHUNK = 64 << 10


class MultiClusterFileDiscoveryPlugin:
    """``multicluster-file-discovery``: validated parameters; the app builds the endpoint source
    (:func:`~kvroute.datastore.file_discovery.file_discovery_for`, host names allowed)."""

    def __init__(self, name: str, params: FileDiscoveryParams) -> None:
        self.typed_name = TypedName(MULTICLUSTER_FILE_DISCOVERY, name)
        self.params = params


class MultiClusterSourceParams(HttpSourceParams):
    scheme: Literal["http", "https"] = "https"
    path: str = "/metrics"
    insecure_skip_verify: bool = Field(False, alias="insecureSkipVerify")
    ca_cert_path: str = Field("", alias="caCertPath")
    client_cert_path: str = Field("", alias="clientCertPath")
    client_key_path: str = Field("", alias="clientKeyPath")

    @model_validator(mode="after")
    def _cert_pair(self) -> MultiClusterSourceParams:
        if bool(self.client_cert_path) != bool(self.client_key_path):
            raise ValueError("clientCertPath and clientKeyPath must be set together")
        return self


def tls_context(params: MultiClusterSourceParams) -> ssl.SSLContext | bool:
    """aiohttp's ``ssl`` argument; raises PollFailed naming the parameter whose file is bad."""
    if params.scheme != "https":
        return True  # unused for http
    context = ssl.create_default_context()
    if params.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif params.ca_cert_path:
        try:
            context = ssl.create_default_context(cafile=params.ca_cert_path)
        except (OSError, ssl.SSLError) as exc:
            raise PollFailed(
                f"parameters.caCertPath: cannot load {params.ca_cert_path!r}: {exc}"
            ) from None
    if params.client_cert_path:
        try:
            context.load_cert_chain(params.client_cert_path, params.client_key_path)
        except (OSError, ssl.SSLError) as exc:
            raise PollFailed(
                f"parameters.clientCertPath/clientKeyPath: cannot load "
                f"{params.client_cert_path!r} / {params.client_key_path!r}: {exc}"
            ) from None
    return context


class MultiClusterMetricsSource(HttpPollingSource):
    """Scrapes each peer cluster's pool metrics (see the module docstring)."""

    replaces_metrics = True
    extractor_type = MULTICLUSTER_METRICS_EXTRACTOR

    def __init__(self, name: str, params: MultiClusterSourceParams) -> None:
        super().__init__(
            MULTICLUSTER_METRICS_DATA_SOURCE,
            name,
            scheme=params.scheme,
            path=params.path,
            port=None,
            interval=round_interval(params.interval),
            ssl_context=True,  # replaced by tls_context(params) at the first scrape
        )
        self.params = params
        self.timeout = max(self.timeout, MIN_TIMEOUT_S)
        self._tls_problem = ""

    def url(self, endpoint: Endpoint) -> str:
        """The metrics host is the endpoint's, unless its ``metricsAddress`` label moves it (a
        bad ``metricsPort`` makes an invalid URL: a failed, counted poll)."""
        address = endpoint.labels.get(METRICS_ADDRESS_LABEL)
        if not address:
            return super().url(endpoint)
        port = endpoint.labels.get(METRICS_PORT_LABEL) or str(endpoint.port)
        host = f"[{address}]" if ":" in address and not address.startswith("[") else address
        return f"{self.scheme}://{host}:{port}{self.path}"

    def parse(self, body: bytes) -> Any:
        try:
            return decode_page(body)
        except MetricsParseError as exc:
            raise PollFailed(str(exc)) from None

    def store(self, endpoint: Endpoint, updates: Mapping[str, object | None]) -> None:
        """The attributes, then, when the cluster has both, the same aggregates as its
        ``EndpointMetrics`` (with one missing they are not refreshed: they go stale, and the
        saturation detector fails closed for that cluster, as for a pod that stops answering)."""
        super().store(endpoint, updates)
        assert self._datastore is not None
        current = self._datastore.get(endpoint.name)
        if current is None:
            return
        kv = _number(current.attributes.get(KV_CACHE_UTILIZATION_ATTRIBUTE))
        queue = _number(current.attributes.get(QUEUE_SIZE_ATTRIBUTE))
        if kv is None or queue is None:
            return
        metrics = dataclasses.replace(
            current.metrics,
            kv_cache_usage=min(1.0, max(0.0, kv)),
            waiting_queue_size=max(0, round(queue)),
            updated_at=0.0,  # the datastore stamps it with its clock
        )
        self._datastore.update_metrics(endpoint.name, metrics)

    async def _fetch(self, url: str) -> bytes:
        if self._session is None:
            try:
                self._ssl = tls_context(self.params)
            except PollFailed as exc:
                if str(exc) != self._tls_problem:
                    self._tls_problem = str(exc)
                    log.error("%s: %s; every scrape fails until it loads", self.typed_name, exc)
                raise
            self._tls_problem = ""
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=10.0, ssl=self._ssl),
                timeout=aiohttp.ClientTimeout(total=None),  # the per-poll timeout is ours
            )
        async with self._session.get(url, allow_redirects=False) as response:
            if not 200 <= response.status < 300:
                raise PollFailed(f"HTTP {response.status}")
            body = bytearray()
            async for chunk in response.content.iter_chunked(_CHUNK):
                body += chunk
                if len(body) > MAX_RESPONSE_BYTES:
                    raise PollFailed(f"metrics page larger than {MAX_RESPONSE_BYTES} bytes")
            return bytes(body)


class MultiClusterExtractorParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    kv_cache_utilization_metric: str = Field(
        DEFAULT_KV_CACHE_METRIC, alias="kvCacheUtilizationMetric"
    )
    queue_size_metric: str = Field(DEFAULT_QUEUE_SIZE_METRIC, alias="queueSizeMetric")

    @field_validator("kv_cache_utilization_metric", "queue_size_metric")
    @classmethod
    def _spec(cls, value: str, info: ValidationInfo) -> str:
        if not value:  # upstream: empty means the default
            default = cls.model_fields[info.field_name or ""].default
            return str(default)
        MetricSpec.parse(value)  # raises ValueError naming the problem
        return value


class MultiClusterMetricsExtractor:
    """The pool gauges of a peer's metrics page -> the two ``llm-d.ai/multicluster-*``
    attributes (see the module docstring)."""

    def __init__(
        self,
        name: str = MULTICLUSTER_METRICS_EXTRACTOR,
        params: MultiClusterExtractorParams | None = None,
    ) -> None:
        p = params or MultiClusterExtractorParams()
        self.typed_name = TypedName(MULTICLUSTER_METRICS_EXTRACTOR, name)
        self.specs: tuple[tuple[str, MetricSpec], ...] = (
            (KV_CACHE_UTILIZATION_ATTRIBUTE, MetricSpec.parse(p.kv_cache_utilization_metric)),
            (QUEUE_SIZE_ATTRIBUTE, MetricSpec.parse(p.queue_size_metric)),
        )
        self._selector = SeriesSelector(spec.name for _, spec in self.specs)

    @property
    def produced_attributes(self) -> tuple[str, ...]:
        return tuple(key for key, _ in self.specs)

    def extract(self, endpoint: Endpoint, payload: Any) -> Mapping[str, object | None]:
        if not isinstance(payload, str):
            raise PollFailed("expected a decoded metrics page")
        try:
            families = self._selector.parse(payload)
        except MetricsParseError as exc:
            raise PollFailed(str(exc)) from None
        updates: dict[str, object | None] = {}
        missing: list[str] = []
        for key, spec in self.specs:
            sample = _latest(s for s in families.get(spec.name, ()) if spec.matches(s))
            if sample is None:
                missing.append(str(spec))
            else:  # NaN (a pool with no ready pod) or Inf: no value, the attribute is cleared
                updates[key] = sample.value if math.isfinite(sample.value) else None
        if not updates:
            raise PollFailed(f"none of {', '.join(missing)} found on the page")
        if missing:
            log.debug("%s: %s not on %s's page", self.typed_name, ", ".join(missing), endpoint.name)
        return updates


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _latest(samples: Iterable[Sample]) -> Sample | None:
    best: Sample | None = None
    for sample in samples:
        if best is None or (sample.timestamp_ms or -1) > (best.timestamp_ms or -1):
            best = sample
    return best


def _discovery(
    name: str, parameters: Mapping[str, Any], handle: PluginHandle
) -> MultiClusterFileDiscoveryPlugin:
    params = validate_parameters(FileDiscoveryParams, name, MULTICLUSTER_FILE_DISCOVERY, parameters)
    return MultiClusterFileDiscoveryPlugin(name, params)


def _source(
    name: str, parameters: Mapping[str, Any], handle: PluginHandle
) -> MultiClusterMetricsSource:
    params = validate_parameters(
        MultiClusterSourceParams, name, MULTICLUSTER_METRICS_DATA_SOURCE, parameters
    )
    return MultiClusterMetricsSource(name, params)


def _extractor(
    name: str, parameters: Mapping[str, Any], handle: PluginHandle
) -> MultiClusterMetricsExtractor:
    params = validate_parameters(
        MultiClusterExtractorParams, name, MULTICLUSTER_METRICS_EXTRACTOR, parameters
    )
    return MultiClusterMetricsExtractor(name, params)


PLUGINS: Mapping[str, PluginFactory] = {
    MULTICLUSTER_FILE_DISCOVERY: _discovery,
    MULTICLUSTER_METRICS_DATA_SOURCE: _source,
    MULTICLUSTER_METRICS_EXTRACTOR: _extractor,
}
