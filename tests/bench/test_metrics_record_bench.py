"""What the EPP's per-request metric recording costs (issue 19).

Run::

    .venv/bin/pytest -q -m bench --benchmark-enable tests/bench/test_metrics_record_bench.py

Group ``observe``: one histogram observation, ``prometheus_client.Histogram`` against kvroute's
``FastHistogram`` (same buckets, same labelled child). Group ``record``: one request's whole
recording in ``EppMetrics`` (``record_scheduled`` + ``record_routed`` + ``record_complete``
with usage and TTFT, both name sets), the path every routed request takes.
"""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Histogram

from kvroute.observability.fast_histogram import FastHistogram
from kvroute.observability.metrics import REQUEST_DURATION_BUCKETS, EppMetrics
from kvroute.requestcontrol.hooks import Usage

pytestmark = pytest.mark.bench


@pytest.mark.benchmark(group="observe")
@pytest.mark.parametrize("cls", [Histogram, FastHistogram], ids=["library", "fast"])
def test_observe(benchmark: Any, cls: Any) -> None:
    h = cls("x", "x", ["a", "b"], buckets=REQUEST_DURATION_BUCKETS, registry=CollectorRegistry())
    child = h.labels("m", "t")
    benchmark(child.observe, 0.7)


@pytest.mark.benchmark(group="record")
def test_record_one_request(benchmark: Any) -> None:
    m = EppMetrics("pool", CollectorRegistry())
    usage = Usage(prompt_tokens=100, completion_tokens=64, cached_tokens=32)

    def one() -> None:
        m.record_scheduled(0.0001)
        m.record_routed("m", "t", "f", 0, 1200, None, 0.0003)
        m.record_complete(
            "m", "t", "f", 0, elapsed_s=0.5, status=200, response_bytes=4000, usage=usage,
            ttft_s=0.05, streaming=True,
        )  # fmt: skip

    benchmark(one)
