"""The I/O shell of the data layer: one asyncio polling task per endpoint, one HTTP session.

:class:`MetricsCollector` mirrors GIE's collector (``pkg/epp/datalayer/collector.go``): every
endpoint in the :class:`~kvroute.datastore.store.Datastore` gets a task that GETs
``scheme://address:port/path`` every ``interval`` (default 50 ms), parses the page with the
endpoint's engine mapping (:mod:`kvroute.datalayer.mappings`) and swaps the new snapshot in.
Tasks start and stop on the store's endpoint events, so the Kubernetes watcher never talks to
the collector directly. The composition root runs :meth:`MetricsCollector.run` in its
TaskGroup; cancelling it stops every polling task and closes the session it opened.

Failure handling:

- the per-scrape ``timeout`` must be shorter than ``interval`` (checked at construction), so a
  hanging server cannot make scrapes pile up;
- after ``n`` consecutive failures the next attempt waits a delay drawn from
  ``[interval, min(max_backoff, interval * 2**n)]`` (:class:`kvroute.backoff.Backoff`, full
  jitter above the normal interval, so a failing server is never polled faster than a healthy
  one); a success restores the normal cadence at once;
- failures are logged at DEBUG (a dead pod must not flood the log) and counted in
  :class:`ScrapeStats`, per endpoint and in total; exporting them as Prometheus metrics is the
  observability package's business;
- a failed scrape leaves the old snapshot in place, so its ``updated_at`` ages and the endpoint
  becomes stale (:mod:`kvroute.datalayer.staleness`); stale endpoints are treated as saturated.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kvroute.backoff import Backoff
from kvroute.datalayer.mappings import MappingRegistry, extract_result
from kvroute.datalayer.prometheus import MetricsParseError, decode_page
from kvroute.datalayer.staleness import (
    DEFAULT_STALENESS_THRESHOLD,
    SATURATION_STALENESS_THRESHOLD,
    is_stale,
    metrics_age,
)
from kvroute.datastore.endpoint import Endpoint
from kvroute.datastore.store import Datastore, EndpointEvent, EndpointEventKind
from kvroute.errors import ConfigError
from kvroute.hostport import format_hostport

__all__ = [
    "DEFAULT_STALENESS_THRESHOLD",
    "SATURATION_STALENESS_THRESHOLD",
    "MetricsCollector",
    "MetricsDataSourceParams",
    "ScrapeStats",
    "is_stale",
    "metrics_age",
    "metrics_url",
]

logger = logging.getLogger(__name__)

DEFAULT_INTERVAL = 0.05
DEFAULT_MAX_BACKOFF = 1.0
_TIMEOUT_SHARE = 0.8  # default timeout = 80 % of the interval
_ERROR_PREVIEW = 200


# A dead, hung or garbage-answering server is logged at WARNING once it failed this many scrapes
# in a row, and once more when it recovers (before issue 20 it was DEBUG only). With the default
# 50 ms interval doubling per failure, 5 failures take about 1.5-2 s, about when its data turns
# stale (--metrics-staleness-threshold 2s): brief hiccups of an overloaded box stay at DEBUG.
WARN_AFTER_FAILURES = 5


class ScrapeHttpError(Exception):
    """The server answered with a non-2xx status."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


@dataclass(slots=True)
class ScrapeStats:
    """Plain counters; one instance per endpoint and one for the whole collector.

    ``consecutive_failures``, ``last_error`` and ``next_delay`` are meaningful per endpoint.
    ``partial`` counts successful scrapes that lacked some metrics or had unusable values.
    """

    attempts: int = 0
    successes: int = 0
    failures: int = 0
    timeouts: int = 0
    http_errors: int = 0
    connection_errors: int = 0
    parse_errors: int = 0
    unexpected_errors: int = 0
    partial: int = 0
    consecutive_failures: int = 0
    last_error: str = ""
    next_delay: float = 0.0


def metrics_url(
    endpoint: Endpoint, *, scheme: str = "http", path: str = "/metrics", port: int | None = None
) -> str:
    """``scheme://address:port/path``; ``port`` overrides the endpoint's own (one metrics port)."""
    hostport = format_hostport(endpoint.address, endpoint.port if port is None else port)
    return f"{scheme}://{hostport}{path}"


class MetricsDataSourceParams(BaseModel):
    """Upstream's ``metrics-data-source`` plugin parameters (``scheme``, ``path``, ``port``,
    TLS). ``port`` (1-65535), when set, replaces every endpoint's inference port for scraping:
    a model server whose metrics are on another port (a gRPC engine serving ``/metrics`` over
    HTTP/1.1 beside its h2c port). Upstream's ``caCertPath``, client cert/key and ``interval``
    are not accepted (strict: rejected by name)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    scheme: str = "http"
    path: str = "/metrics"
    port: int | None = Field(None, ge=1, le=65535)
    insecure_skip_verify: bool = Field(True, alias="insecureSkipVerify")


class MetricsCollector:
    """Keeps every endpoint's metrics fresh; see the module docstring for the failure rules."""

    def __init__(
        self,
        datastore: Datastore,
        mappings: MappingRegistry,
        interval: float = DEFAULT_INTERVAL,
        timeout: float | None = None,
        *,
        max_backoff: float = DEFAULT_MAX_BACKOFF,
        scheme: str = "http",
        path: str = "/metrics",
        port: int | None = None,
        insecure_skip_verify: bool = True,
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if timeout is None:
            timeout = interval * _TIMEOUT_SHARE
        if not interval > 0:
            raise ConfigError(f"metrics scrape interval must be > 0, got {interval}")
        if not 0 < timeout < interval:
            raise ConfigError(
                f"metrics scrape timeout ({timeout}s) must be > 0 and shorter than the "
                f"interval ({interval}s), or slow scrapes pile up"
            )
        if max_backoff < interval:
            raise ConfigError(f"max_backoff ({max_backoff}s) must be >= interval ({interval}s)")
        if scheme not in ("http", "https"):
            raise ConfigError(f"metrics scheme must be http or https, got {scheme!r}")
        if not path.startswith("/"):
            raise ConfigError(f"metrics path must start with '/', got {path!r}")
        if port is not None and not 0 < port < 65536:
            raise ConfigError(f"metrics port must be 1..65535, got {port}")
        self.interval = interval
        self.timeout = timeout
        self.max_backoff = max_backoff
        self.backoff = Backoff(initial=interval, maximum=max_backoff, minimum=interval)
        self.scheme = scheme
        self.path = path
        self.port = port
        self.insecure_skip_verify = insecure_skip_verify
        self.stats = ScrapeStats()
        self._datastore = datastore
        self._mappings = mappings
        self._clock = clock
        self._session = session
        self._http: aiohttp.ClientSession | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._endpoint_stats: dict[str, ScrapeStats] = {}
        self._stop = asyncio.Event()

    @classmethod
    def from_params(
        cls,
        datastore: Datastore,
        *,
        data_source: Mapping[str, Any] | None = None,
        extractor: Mapping[str, Any] | None = None,
        interval: float = DEFAULT_INTERVAL,
        timeout: float | None = None,
        port: int | None = None,
    ) -> MetricsCollector:
        """Build from ``EndpointPickerConfig`` plugin parameters.

        ``data_source`` is the ``metrics-data-source`` plugin's ``parameters`` and ``extractor``
        the ``core-metrics-extractor``'s; ``interval`` is ``--refresh-metrics-interval``.
        Errors are :class:`ConfigError` naming the field.
        """
        try:
            source = MetricsDataSourceParams.model_validate(data_source or {})
        except ValidationError as exc:
            fields = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise ConfigError(f"metrics-data-source parameters: {fields}") from None
        return cls(
            datastore,
            MappingRegistry.from_params(extractor),
            interval,
            timeout,
            scheme=source.scheme,
            path=source.path,
            port=port,
            insecure_skip_verify=source.insecure_skip_verify,
        )

    # -- public -----------------------------------------------------------------------------

    def endpoint_stats(self, name: str) -> ScrapeStats | None:
        return self._endpoint_stats.get(name)

    def polled_endpoints(self) -> frozenset[str]:
        """Names with a live polling task (for tests and debugging)."""
        return frozenset(n for n, t in self._tasks.items() if not t.done())

    def stop(self) -> None:
        """Ask :meth:`run` to return (it also stops when cancelled)."""
        self._stop.set()

    async def run(self) -> None:
        """Poll every endpoint until :meth:`stop` or cancellation; owns its HTTP session."""
        session = self._session
        owned = session is None
        if session is None:
            session = self._make_session()
        try:
            async with asyncio.TaskGroup() as tg:
                self._http = session
                self._tg = tg
                unsubscribe = self._datastore.subscribe(self._on_event)
                try:
                    for endpoint in self._datastore.endpoints():
                        self._start(endpoint)
                    await self._stop.wait()
                finally:
                    unsubscribe()
                    self._tg = None
                    for task in self._tasks.values():
                        task.cancel()
            self._tasks.clear()
        finally:
            self._http = None
            self._stop.clear()  # a later run() polls again
            if owned:
                await session.close()

    # -- internals --------------------------------------------------------------------------

    def _make_session(self) -> aiohttp.ClientSession:
        """One pooled session for all endpoints: keep-alive saves a TCP handshake per scrape."""
        connector = aiohttp.TCPConnector(
            limit=0,  # one connection per endpoint; no pool-wide cap to queue behind
            keepalive_timeout=10.0,  # upstream's idle-connection timeout
            ssl=not self.insecure_skip_verify,  # False = do not verify (upstream default)
        )
        return aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None),  # the per-scrape timeout is ours
            # identity: prometheus_client (vLLM, SGLang) gzips a 59 KB page to ~6 KB when asked,
            # and inflating it costs ~60 us of picker CPU per scrape, as much as parsing it.
            # In-cluster bandwidth (~1.2 MB/s per endpoint at 50 ms) is the cheaper resource.
            headers={"Accept": "text/plain;version=0.0.4", "Accept-Encoding": "identity"},
        )

    def _on_event(self, event: EndpointEvent) -> None:
        name = event.endpoint.name
        if event.kind is EndpointEventKind.ADDED:
            self._start(event.endpoint)
        elif event.kind is EndpointEventKind.REMOVED:
            task = self._tasks.pop(name, None)
            if task is not None:
                task.cancel()
            self._endpoint_stats.pop(name, None)
        # LABELS_CHANGED needs nothing: the engine mapping is looked up on every scrape.

    def _start(self, endpoint: Endpoint) -> None:
        if self._tg is None:
            return  # not running yet; run() starts a task for every stored endpoint
        old = self._tasks.get(endpoint.name)
        if old is not None and not old.done():
            old.cancel()
        stats = self._endpoint_stats[endpoint.name] = ScrapeStats()
        url = metrics_url(endpoint, scheme=self.scheme, path=self.path, port=self.port)
        self._tasks[endpoint.name] = self._tg.create_task(
            self._poll(endpoint.name, url, stats), name=f"scrape {endpoint.name}"
        )

    async def _poll(self, name: str, url: str, stats: ScrapeStats) -> None:
        while self._datastore.get(name) is not None:
            started = self._clock()
            ok = await self._scrape_once(name, url, stats)
            if ok:
                delay = max(0.0, self.interval - (self._clock() - started))
            else:
                delay = self.backoff.delay(stats.consecutive_failures)
            stats.next_delay = delay
            await asyncio.sleep(delay)

    async def _fetch(self, url: str) -> bytes:
        assert self._http is not None  # set for the whole life of run()
        async with self._http.get(url, allow_redirects=False) as response:
            body = await response.read()
            if not 200 <= response.status < 300:
                raise ScrapeHttpError(response.status)
            return body

    async def _scrape_once(self, name: str, url: str, stats: ScrapeStats) -> bool:
        stats.attempts += 1
        self.stats.attempts += 1
        try:
            async with asyncio.timeout(self.timeout):
                body = await self._fetch(url)
            text = decode_page(body)
            endpoint = self._datastore.get(name)
            if endpoint is None:
                return False  # removed while the request was in flight
            mapping = self._mappings.for_labels(endpoint.labels)
            result = extract_result(text, mapping, self._clock(), endpoint.metrics)
        except TimeoutError:
            self._failed(name, url, stats, "timeouts", f"timed out after {self.timeout:.3f}s")
            return False
        except ScrapeHttpError as exc:
            self._failed(name, url, stats, "http_errors", str(exc))
            return False
        except MetricsParseError as exc:
            self._failed(name, url, stats, "parse_errors", str(exc))
            return False
        except (aiohttp.ClientError, OSError) as exc:
            self._failed(name, url, stats, "connection_errors", f"{type(exc).__name__}: {exc}")
            return False
        except Exception as exc:  # supervisor loop: log, count, back off, keep polling
            logger.warning("unexpected error scraping %s (%s)", name, url, exc_info=True)
            self._failed(name, url, stats, "unexpected_errors", f"{type(exc).__name__}: {exc}")
            return False
        self._datastore.update_metrics(name, result.metrics)
        if stats.consecutive_failures >= WARN_AFTER_FAILURES:  # issue 20 finding 8: once
            logger.warning(
                "metrics of %s available again after %d failed scrapes",
                name,
                stats.consecutive_failures,
            )
        elif stats.consecutive_failures:
            logger.debug(
                "scrape of %s recovered after %d failures", name, stats.consecutive_failures
            )
        stats.consecutive_failures = 0
        stats.successes += 1
        self.stats.successes += 1
        if result.missing or result.problems:
            stats.partial += 1
            self.stats.partial += 1
            logger.debug(
                "partial scrape of %s: missing %s, problems %s",
                name,
                result.missing,
                result.problems,
            )
        return True

    def _failed(self, name: str, url: str, stats: ScrapeStats, kind: str, reason: str) -> None:
        reason = reason[:_ERROR_PREVIEW]
        for target in (stats, self.stats):
            setattr(target, kind, getattr(target, kind) + 1)
            target.failures += 1
            target.last_error = reason
        stats.consecutive_failures += 1
        if stats.consecutive_failures == WARN_AFTER_FAILURES:  # once per outage, at WARNING
            logger.warning(
                "metrics of %s (%s) unavailable: %d scrapes in a row failed (%s); its data goes "
                "stale and it stops counting as ready",
                name,
                url,
                stats.consecutive_failures,
                reason,
            )
        logger.debug(
            "scrape of %s (%s) failed (%d in a row): %s",
            name,
            url,
            stats.consecutive_failures,
            reason,
        )
