"""Pure parts of the collector: backoff policy, URL building, option validation, staleness.

The polling itself runs against real HTTP servers in ``tests/integration/test_scraper.py``.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from kvroute.datalayer.mappings import MappingRegistry
from kvroute.datalayer.scraper import MetricsCollector, metrics_url
from kvroute.datalayer.staleness import (
    DEFAULT_STALENESS_THRESHOLD,
    SATURATION_STALENESS_THRESHOLD,
    is_stale,
    metrics_age,
)
from kvroute.datastore.endpoint import Endpoint, EndpointMetrics
from kvroute.datastore.store import Datastore
from kvroute.errors import ConfigError


@pytest.mark.parametrize(
    ("failures", "expected"),
    [(0, 0.05), (1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (50, 1.0), (10_000, 1.0)],
    ids=["none", "one", "two", "three", "four", "capped", "long-outage", "no-overflow"],
)
def test_backoff_doubles_per_failure_and_is_capped(failures: int, expected: float) -> None:
    collector = MetricsCollector(Datastore(), MappingRegistry(), 0.05, max_backoff=1.0)
    assert collector.backoff.cap(failures) == pytest.approx(expected)
    # jittered between the normal interval and that cap: never faster than a healthy poll
    for _ in range(20):
        assert 0.05 <= collector.backoff.delay(failures) <= expected + 1e-12


@pytest.mark.parametrize(
    ("address", "port", "kwargs", "url"),
    [
        ("10.0.0.1", 8000, {}, "http://10.0.0.1:8000/metrics"),
        ("10.0.0.1", 8000, {"scheme": "https"}, "https://10.0.0.1:8000/metrics"),
        ("10.0.0.1", 8000, {"path": "/stats/prom"}, "http://10.0.0.1:8000/stats/prom"),
        ("10.0.0.1", 8000, {"port": 9400}, "http://10.0.0.1:9400/metrics"),
        ("fd00::7", 8000, {}, "http://[fd00::7]:8000/metrics"),
        ("fd00::7", 8000, {"port": 9400}, "http://[fd00::7]:9400/metrics"),
    ],
    ids=["default", "https", "path", "port-override", "ipv6", "ipv6-port-override"],
)
def test_metrics_url(address: str, port: int, kwargs: dict[str, Any], url: str) -> None:
    assert metrics_url(Endpoint("e", address, port), **kwargs) == url


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"interval": 0.0}, "interval must be > 0"),
        ({"interval": 0.05, "timeout": 0.05}, "shorter than the interval"),
        ({"interval": 0.05, "timeout": 0.2}, "shorter than the interval"),
        ({"interval": 0.05, "timeout": 0.0}, "must be > 0"),
        ({"max_backoff": 0.01}, "max_backoff"),
        ({"scheme": "ftp"}, "http or https"),
        ({"path": "metrics"}, "start with '/'"),
        ({"port": 70000}, "1..65535"),
    ],
    ids=[
        "zero-interval",
        "timeout-equals-interval",
        "timeout-longer",
        "zero-timeout",
        "backoff-below-interval",
        "scheme",
        "relative-path",
        "port-range",
    ],
)
def test_invalid_collector_options_are_config_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        MetricsCollector(Datastore(), MappingRegistry(), **kwargs)


def test_default_timeout_is_shorter_than_interval() -> None:
    collector = MetricsCollector(Datastore(), MappingRegistry())
    assert collector.interval == 0.05
    assert 0 < collector.timeout < collector.interval


@pytest.mark.parametrize(
    ("updated_at", "now", "threshold", "stale"),
    [
        (0.0, 5.0, 2.0, True),
        (4.0, 5.0, 2.0, False),
        (3.0, 5.0, 2.0, False),
        (2.9, 5.0, 2.0, True),
        (10.0, 10.1, 0.2, False),
        (10.0, 10.3, 0.2, True),
    ],
    ids=["never-scraped", "fresh", "at-threshold", "past-threshold", "detector-fresh", "detector"],
)
def test_is_stale(updated_at: float, now: float, threshold: float, stale: bool) -> None:
    endpoint = Endpoint("e", "10.0.0.1", 8000, metrics=EndpointMetrics(updated_at=updated_at))
    assert is_stale(endpoint, now, threshold) is stale


def test_metrics_age_and_upstream_defaults() -> None:
    assert metrics_age(Endpoint("e", "a", 1), 5.0) == math.inf
    endpoint = Endpoint("e", "a", 1, metrics=EndpointMetrics(updated_at=4.0))
    assert metrics_age(endpoint, 5.5) == pytest.approx(1.5)
    assert (DEFAULT_STALENESS_THRESHOLD, SATURATION_STALENESS_THRESHOLD) == (2.0, 0.2)


def test_from_params_reads_upstream_plugin_parameters() -> None:
    collector = MetricsCollector.from_params(
        Datastore(),
        data_source={"scheme": "https", "path": "/v2/metrics", "insecureSkipVerify": False},
        extractor={"defaultEngine": "sglang"},
        interval=0.1,
        port=9400,
    )
    assert (collector.scheme, collector.path, collector.port) == ("https", "/v2/metrics", 9400)
    assert collector.insecure_skip_verify is False
    assert collector.interval == 0.1
    assert collector.timeout < collector.interval


@pytest.mark.parametrize(
    ("data_source", "extractor", "message"),
    [
        ({"schema": "http"}, None, "metrics-data-source parameters: schema: Extra inputs"),
        ({"scheme": "gopher"}, None, "http or https"),
        (None, {"defaultEngine": "nope"}, "defaultEngine"),
    ],
    ids=["unknown-field", "bad-scheme", "bad-extractor"],
)
def test_from_params_errors_are_config_errors(
    data_source: dict[str, Any] | None, extractor: dict[str, Any] | None, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        MetricsCollector.from_params(Datastore(), data_source=data_source, extractor=extractor)


def test_registries_do_not_share_parse_memos() -> None:
    first, second = MappingRegistry(), MappingRegistry()
    assert first.default == second.default
    assert first.default.selector is not second.default.selector
