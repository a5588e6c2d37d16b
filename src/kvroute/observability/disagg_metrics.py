"""``llm_d_epp_disagg_decision_total``: P/D decisions, read from the profile handler on scrape.

Upstream labels: ``plugin_name``, ``plugin_type``, ``model_name``, ``decision_type``
(``decode-only``, ``prefill-decode``, ``encode-decode``, ``encode-prefill-decode``). The
handler only counts (scheduling imports no Prometheus); this collector turns its counts into a
counter family each time ``/metrics`` is scraped.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from kvroute.plugins.base import Plugin
from kvroute.plugins.lifecycle import DecisionCounter

NAME = "llm_d_epp_disagg_decision"
LABELS = ("plugin_name", "plugin_type", "model_name", "decision_type")


class DisaggDecisionCollector(Collector):
    def __init__(self, plugins: Sequence[Plugin]) -> None:
        self.sources = [(p.typed_name, p) for p in plugins if isinstance(p, DecisionCounter)]

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            NAME, "Total number of disaggregation routing decisions made", labels=LABELS
        )
        for tn, source in self.sources:
            for (model, kind), n in sorted(source.decision_counts().items()):
                family.add_metric([tn.name, tn.type, model, kind], n)
        yield family


def register_disagg_metrics(registry: CollectorRegistry, plugins: Sequence[Plugin]) -> bool:
    """Register the collector when a plugin counts P/D decisions; True if one did."""
    collector = DisaggDecisionCollector(plugins)
    if not collector.sources:
        return False
    registry.register(collector)
    return True
