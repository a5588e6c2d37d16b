"""``kvroute_token_render_total``: outcomes of ``token-producer``'s ``vllm`` render calls.

Labels ``plugin_name`` and ``outcome`` (``rendered``: engine token ids came back; ``failed``:
the request was hashed from the text estimate instead). Read from the producer's counters on
scrape (scheduling imports no Prometheus); registered only when such a producer is configured.
Upstream has no metric for it (its render errors are logged).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from kvroute.plugins.base import Plugin

NAME = "kvroute_token_render"


class RenderOutcomeCollector(Collector):
    def __init__(self, plugins: Sequence[Plugin]) -> None:
        self.sources = [p for p in plugins if hasattr(p, "rendered") and hasattr(p, "failures")]

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            NAME,
            "token-producer vllm render calls, by outcome (failed: hashed from the estimate)",
            labels=("plugin_name", "outcome"),
        )
        for p in self.sources:
            family.add_metric([p.typed_name.name, "rendered"], p.rendered)
            family.add_metric([p.typed_name.name, "failed"], p.failures)
        yield family


def register_render_metrics(registry: CollectorRegistry, plugins: Sequence[Plugin]) -> bool:
    """Register the collector when a render token producer is configured; True if one is."""
    collector = RenderOutcomeCollector(plugins)
    if not collector.sources:
        return False
    registry.register(collector)
    return True
