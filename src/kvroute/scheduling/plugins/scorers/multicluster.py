"""The multi-cluster scheduling variants (Alpha upstream): scoring peer clusters, not pods.

In a cluster-scoped EPP each endpoint is a peer cluster (``multicluster-file-discovery``), and
its load is its pool's aggregate, written by the ``multicluster-metrics-extractor`` into two
endpoint attributes (:mod:`kvroute.datalayer.multicluster`). The two metric scorers read them;
a config with either scorer but without that extractor listed under a data source in
``dataLayer.sources`` fails to load (upstream's missing-producer error), since the scorer would
otherwise score nothing, silently. Neither takes parameters (as upstream).

* ``multicluster-kv-cache-utilization-scorer`` (Distribution):
  ``score = 1 - llm-d.ai/multicluster-kv-cache-utilization``.
* ``multicluster-queue-scorer`` (Distribution): min-max over the candidates of
  ``llm-d.ai/multicluster-queue-size``: the shortest queue 1, the longest 0, all equal 1.

A cluster without the attribute yet (never scraped, or its page lacked the gauge) is left
unscored (0 from this scorer), as upstream; it is not removed. The stock scorers' inputs (the
per-pod ``EndpointMetrics`` and kvroute's in-flight counters) mean nothing for a cluster and are
not read.

Pure delegations, as upstream (a cluster is just an endpoint to them):

* ``multicluster-prefix-cache-scorer``: the stock ``prefix-cache-scorer`` (same parameters,
  same behaviour) under this type; it also reads a ``multicluster-approx-prefix-cache-producer``
  named by ``prefixMatchInfoProducerName`` (default ``approx-prefix-cache-producer``).
* ``multicluster-approx-prefix-cache-producer``: the stock ``approx-prefix-cache-producer``
  (same parameters) under this type. It pairs with ``multicluster-prefix-cache-scorer``; the
  stock ``prefix-cache-scorer`` does not (yet) accept it as its producer (kvroute's stock scorer
  checks the producer's type), unlike upstream where the pairing is by name only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kvroute.datalayer.multicluster import (
    KV_CACHE_UTILIZATION_ATTRIBUTE,
    MULTICLUSTER_METRICS_EXTRACTOR,
    QUEUE_SIZE_ATTRIBUTE,
)
from kvroute.datastore.endpoint import Endpoint
from kvroute.errors import PluginValidationError
from kvroute.framework.attributes import scalar_attribute
from kvroute.plugins.base import Plugin, TypedName
from kvroute.plugins.registry import PluginFactory, PluginHandle
from kvroute.scheduling.interfaces import CycleState, Scorer, ScorerCategory
from kvroute.scheduling.plugins.params import PluginParams, parse_params
from kvroute.scheduling.plugins.prefix import PLUGINS as PREFIX_PLUGINS
from kvroute.scheduling.plugins.prefix.approximate import TYPE as PREFIX_SCORER_TYPE
from kvroute.scheduling.plugins.prefix.approximate import PrefixCacheScorer
from kvroute.scheduling.plugins.prefix.producer import (
    MULTICLUSTER_PRODUCER_TYPE,
    PRODUCER_TYPE,
    ProducedPrefixScorer,
    ScorerParams,
)
from kvroute.scheduling.request import InferenceRequest

KV_CACHE_TYPE = "multicluster-kv-cache-utilization-scorer"
QUEUE_TYPE = "multicluster-queue-scorer"
PREFIX_TYPE = "multicluster-prefix-cache-scorer"
APPROX_PRODUCER_TYPE = MULTICLUSTER_PRODUCER_TYPE


class _NoParams(PluginParams):
    pass


class MultiClusterKvCacheScorer:
    """``1 - pool KV-cache utilization`` per cluster (see the module docstring)."""

    category = ScorerCategory.DISTRIBUTION
    required_attributes: Mapping[str, str] = {
        KV_CACHE_UTILIZATION_ATTRIBUTE: MULTICLUSTER_METRICS_EXTRACTOR
    }

    def __init__(self, name: str = KV_CACHE_TYPE) -> None:
        self.typed_name = TypedName(KV_CACHE_TYPE, name)

    def score(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        scores: dict[str, float] = {}
        for e in endpoints:
            util = scalar_attribute(e, KV_CACHE_UTILIZATION_ATTRIBUTE)
            if util is not None:
                scores[e.name] = min(1.0, max(0.0, 1.0 - util))
        return scores


class MultiClusterQueueScorer:
    """Min-max of the pool queue size over the clusters that report one."""

    category = ScorerCategory.DISTRIBUTION
    required_attributes: Mapping[str, str] = {QUEUE_SIZE_ATTRIBUTE: MULTICLUSTER_METRICS_EXTRACTOR}

    def __init__(self, name: str = QUEUE_TYPE) -> None:
        self.typed_name = TypedName(QUEUE_TYPE, name)

    def score(
        self, state: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        queues: dict[str, float] = {}
        for e in endpoints:
            q = scalar_attribute(e, QUEUE_SIZE_ATTRIBUTE)
            if q is not None:
                queues[e.name] = q
        if not queues:
            return {}
        lo, hi = min(queues.values()), max(queues.values())
        if hi == lo:
            return dict.fromkeys(queues, 1.0)
        return {name: (hi - q) / (hi - lo) for name, q in queues.items()}


def _kv_factory(
    name: str, parameters: Mapping[str, Any], handle: PluginHandle
) -> MultiClusterKvCacheScorer:
    parse_params(_NoParams, name, KV_CACHE_TYPE, parameters)
    return MultiClusterKvCacheScorer(name)


def _queue_factory(
    name: str, parameters: Mapping[str, Any], handle: PluginHandle
) -> MultiClusterQueueScorer:
    parse_params(_NoParams, name, QUEUE_TYPE, parameters)
    return MultiClusterQueueScorer(name)


def _renamed(error: PluginValidationError, stock: str, own: str) -> PluginValidationError:
    """The stock factory's error, naming this type instead of the stock one."""
    return PluginValidationError(error.message.replace(f"({stock})", f"({own})", 1))


def _prefix_factory(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> Plugin:
    raw = dict(parameters or {})
    producer_name = raw.get("prefixMatchInfoProducerName", PRODUCER_TYPE)
    producer = _multicluster_producer(handle, producer_name)
    if producer is not None:  # the multicluster producer: bind to it as the stock scorer would
        parse_params(ScorerParams, name, PREFIX_TYPE, raw)
        plugin: Any = ProducedPrefixScorer(name, producer)
    else:
        try:
            plugin = PREFIX_PLUGINS[PREFIX_SCORER_TYPE](name, raw, handle)
        except PluginValidationError as exc:
            raise _renamed(exc, PREFIX_SCORER_TYPE, PREFIX_TYPE) from None
    plugin.typed_name = TypedName(PREFIX_TYPE, name)
    return plugin  # type: ignore[no-any-return]


def _multicluster_producer(handle: PluginHandle, producer_name: object) -> PrefixCacheScorer | None:
    if not isinstance(producer_name, str):
        return None
    try:
        plugin = handle.plugin(producer_name)
    except PluginValidationError:
        return None
    if isinstance(plugin, PrefixCacheScorer) and plugin.typed_name.type == APPROX_PRODUCER_TYPE:
        return plugin
    return None


def _producer_factory(name: str, parameters: Mapping[str, Any], handle: PluginHandle) -> Plugin:
    try:
        plugin = PREFIX_PLUGINS[PRODUCER_TYPE](name, parameters, handle)
    except PluginValidationError as exc:
        raise _renamed(exc, PRODUCER_TYPE, APPROX_PRODUCER_TYPE) from None
    assert isinstance(plugin, PrefixCacheScorer)
    plugin.typed_name = TypedName(APPROX_PRODUCER_TYPE, name)
    return plugin


PLUGINS: Mapping[str, PluginFactory] = {
    KV_CACHE_TYPE: _kv_factory,
    QUEUE_TYPE: _queue_factory,
    PREFIX_TYPE: _prefix_factory,
    APPROX_PRODUCER_TYPE: _producer_factory,
}

_kv: type[Scorer] = MultiClusterKvCacheScorer
_q: type[Scorer] = MultiClusterQueueScorer
