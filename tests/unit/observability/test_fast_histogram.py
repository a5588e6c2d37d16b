"""``FastHistogram`` writes exactly what ``prometheus_client.Histogram`` writes for the same
observations (the ``_created`` timestamps aside), and refuses what the library refuses."""

from __future__ import annotations

import re
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from kvroute.observability.fast_histogram import FastHistogram

VALUES = (0.0, 0.05, 0.1, 0.10000001, 0.5, 1, 10, 11, 1e9, float("inf"), -3.0)


def _exposition(cls: Any) -> str:
    r = CollectorRegistry(auto_describe=True)
    labelled = cls("x_seconds", "doc x", ["a", "b"], buckets=(0.1, 1, 10), registry=r)
    for v in VALUES:
        labelled.labels("m", "t").observe(v)
    labelled.labels("n", 3)  # a child with no observations is exported with zeros
    plain = cls("y_bytes", "doc y", buckets=(64, 1048576), registry=r)
    plain.observe(100)
    cls("z_seconds", "doc z", ["a"], buckets=(1,), registry=r)  # no child yet: no series
    text = generate_latest(r).decode()
    return re.sub(r"_created(\{[^}]*\})? \S+", r"_created\1 T", text)


def test_exposition_matches_the_library() -> None:
    ours = _exposition(FastHistogram)
    assert ours == _exposition(Histogram)
    assert 'x_seconds_bucket{a="m",b="t",le="0.1"} 4.0' in ours  # -3, 0, 0.05, 0.1 (le is <=)
    assert 'x_seconds_count{a="n",b="3"} 0.0' in ours


def test_sample_values_read_through_the_registry() -> None:
    r = CollectorRegistry()
    h = FastHistogram("h", "doc", ["k"], buckets=(1, 2), registry=r)
    h.labels("a").observe(1.5)
    h.labels("a").observe(3)
    assert r.get_sample_value("h_bucket", {"k": "a", "le": "2.0"}) == 1.0
    assert r.get_sample_value("h_count", {"k": "a"}) == 2.0
    assert r.get_sample_value("h_sum", {"k": "a"}) == 4.5


def test_refusals() -> None:
    h = FastHistogram("h", "doc", ["k"], buckets=(1,), registry=None)
    with pytest.raises(ValueError, match="expected labels"):
        h.labels("a", "b")
    with pytest.raises(ValueError, match="call labels"):
        h.observe(1.0)
    with pytest.raises(ValueError, match="increasing"):
        FastHistogram("g", "doc", buckets=(2, 1), registry=None)
    r = CollectorRegistry()
    FastHistogram("dup", "doc", buckets=(1,), registry=r)
    with pytest.raises(ValueError, match="Duplicated"):
        FastHistogram("dup", "doc", buckets=(1,), registry=r)
