"""``llm_d_epp_kv_cache_index_*``: the KV-event index counters of ``precise-prefix-cache-producer``.

Upstream registers them, unlabelled, only when the producer's
``indexerConfig.kvBlockIndexConfig.enableMetrics`` is true; so does kvroute. Read from the
producers' own counters on scrape (scheduling imports no Prometheus); with several enabled
producers the counters are summed. Exported: admissions, evictions, lookup requests and lookup
hits. Not exported: upstream's ``max_pod_hit_count``, lookup-latency histogram and event-dedup
counters (the index keeps no such counts), nor the deprecated ``kvcache_*`` aliases.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol, runtime_checkable

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from kvroute.plugins.base import Plugin

PREFIX = "llm_d_epp_"
_HELP = {
    "kv_cache_index_admissions_total": "KV blocks admitted to the precise prefix index",
    "kv_cache_index_evictions_total": "KV blocks evicted from the precise prefix index",
    "kv_cache_index_lookup_requests_total": "Lookups in the precise prefix index",
    "kv_cache_index_lookup_hits_total": "Prefix blocks matched by the best endpoint per lookup",
}


@runtime_checkable
class IndexMetricsSource(Protocol):
    """A plugin keeping upstream's index counters (``precise-prefix-cache-producer``)."""

    metrics_enabled: bool

    def index_metrics(self) -> Mapping[str, int]: ...


class KvIndexCollector(Collector):
    def __init__(self, plugins: Sequence[Plugin]) -> None:
        self.sources = [
            p.index_metrics
            for p in plugins
            if isinstance(p, IndexMetricsSource) and p.metrics_enabled
        ]

    def collect(self) -> Iterator[Metric]:
        totals = dict.fromkeys(_HELP, 0)
        for read in self.sources:
            for key, value in read().items():
                if key in totals:
                    totals[key] += value
        for key, value in totals.items():
            # prometheus_client appends ``_total`` to a counter family's name itself
            family = CounterMetricFamily(PREFIX + key.removesuffix("_total"), _HELP[key])
            family.add_metric([], value)
            yield family


def register_kv_index_metrics(registry: CollectorRegistry, plugins: Sequence[Plugin]) -> bool:
    """Register the collector when a producer has ``enableMetrics``; True if one has."""
    collector = KvIndexCollector(plugins)
    if not collector.sources:
        return False
    registry.register(collector)
    return True
