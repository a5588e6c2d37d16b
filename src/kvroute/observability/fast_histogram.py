"""A Prometheus histogram for the per-request path that costs a bisect, not two locked increments.

Why not ``prometheus_client.Histogram`` (measured, issue 19): every ``observe`` takes a mutex
per bucket value and per sum, about 2.7 µs on this box against 0.4 µs here, and the EPP makes
about 35 observations per request (both metric name sets, per-plugin timings), i.e. ~0.1 ms of
its own CPU per request. The EPP observes and exports from one thread (its event loop; the
``/metrics`` handler runs there too), so no lock is needed: an observation is one list-slot
increment and one float add.

Exposition is the library's: this is a custom collector yielding a ``HistogramMetricFamily``
(``_bucket``/``_count``/``_sum`` and the ``_created`` gauge, as ``Histogram`` writes them), and
``labels(*values)`` / ``observe`` mirror ``Histogram``'s API, so call sites and scrapes do not
change. Unlabelled histograms exist from the start (zeros), labelled children from their first
``labels()`` call, as with the library.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString


class HistogramChild:
    """One label set's buckets (non-cumulative counts; the last slot is +Inf) and sum."""

    __slots__ = ("_bounds", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, value: float) -> None:
        # Bucket ``le=b`` counts values <= b: the first bound >= value.
        self.counts[bisect.bisect_left(self._bounds, value)] += 1
        self.sum += value


class FastHistogram:
    """``Histogram(name, doc, labelnames, buckets=..., registry=...)`` for the request path."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float],
        registry: CollectorRegistry | None,
    ) -> None:
        bounds = tuple(float(b) for b in buckets if not math.isinf(b))
        if list(bounds) != sorted(set(bounds)) or not bounds:
            raise ValueError(f"histogram {name}: buckets must be increasing and non-empty")
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._bounds = bounds
        # The library's own label formatting (untyped in prometheus_client).
        self._les = [floatToGoString(b) for b in bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
        self._children: dict[tuple[str, ...], HistogramChild] = {}
        if not self.labelnames:
            self._children[()] = HistogramChild(bounds)
        if registry is not None:
            registry.register(self)

    def labels(self, *values: object) -> HistogramChild:
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            if len(key) != len(self.labelnames):
                raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {key}")
            child = self._children[key] = HistogramChild(self._bounds)
        return child

    def observe(self, value: float) -> None:
        """Unlabelled histograms only (as ``Histogram.observe``)."""
        if self.labelnames:
            raise ValueError(f"{self.name}: labelled histogram, call labels() first")
        self._children[()].observe(value)

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key, child in list(self._children.items()):
            counts = list(child.counts)  # one consistent copy
            cumulative, running = [], 0
            for le, n in zip(self._les, counts, strict=True):
                running += n
                cumulative.append((le, float(running)))
            family.add_metric(list(key), cumulative, child.sum)
            labels = dict(zip(self.labelnames, key, strict=True))
            family.samples.append(Sample(self.name + "_created", labels, child.created))
        yield family
