"""The metrics collector against real aiohttp HTTP servers on loopback.

Each "model server" here is a real HTTP server serving a real ``/metrics`` page (the committed
vLLM fixture with the queue value rewritten, or garbage, or a 500, or nothing at all). Nothing is
mocked; only the simulator is not used, so this test does not depend on it.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web

from kvroute.datalayer.mappings import MappingRegistry
from kvroute.datalayer.scraper import MetricsCollector, is_stale
from kvroute.datastore.store import Datastore

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).parents[1] / "testdata" / "metrics"
VLLM_PAGE = (FIXTURES / "vllm.txt").read_text()
GARBAGE_PAGE = (FIXTURES / "garbage.txt").read_text()
INTERVAL = 0.05
TIMEOUT = 0.04
MAX_BACKOFF = 0.4
WAIT = 15.0  # generous: the box is shared; conditions are polled, never timed


class ModelServer:
    """A real HTTP server whose ``/metrics`` behaviour the test controls."""

    def __init__(self, behaviour: str = "ok", fail_first: int = 0) -> None:
        self.behaviour = behaviour
        self.fail_first = fail_first
        self.waiting = 0
        self.hits = 0
        self.peers: set[tuple[str, int]] = set()
        self.accept_encodings: set[str] = set()
        self.release = asyncio.Event()
        self.port = 0
        self._runner: web.AppRunner | None = None

    def page(self) -> str:
        return re.sub(
            r"^(vllm:num_requests_waiting\{[^}]*\}) \S+$",
            rf"\g<1> {float(self.waiting)}",
            VLLM_PAGE,
            flags=re.M,
        )

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        self.accept_encodings.add(request.headers.get("Accept-Encoding", ""))
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer is not None:
            self.peers.add((peer[0], peer[1]))
        if self.behaviour == "hang":
            await self.release.wait()  # until teardown; the scraper must time out first
        if self.behaviour == "500" or self.hits <= self.fail_first:
            return web.Response(status=500, text="internal error")
        if self.behaviour == "garbage":
            return web.Response(text=GARBAGE_PAGE, content_type="text/html")
        return web.Response(text=self.page(), content_type="text/plain")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self.handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def servers() -> AsyncIterator[Callable[..., ModelServer]]:
    made: list[ModelServer] = []

    def make(behaviour: str = "ok", fail_first: int = 0) -> ModelServer:
        server = ModelServer(behaviour, fail_first)
        made.append(server)
        return server

    yield make
    for server in made:
        await server.stop()


async def _start_all(*servers: ModelServer) -> None:
    for server in servers:
        await server.start()


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
async def collector_factory() -> AsyncIterator[Callable[[Datastore], MetricsCollector]]:
    tasks: list[asyncio.Task[None]] = []

    def make(store: Datastore) -> MetricsCollector:
        collector = MetricsCollector(
            store, MappingRegistry(), INTERVAL, TIMEOUT, max_backoff=MAX_BACKOFF
        )
        tasks.append(asyncio.create_task(collector.run()))
        return collector

    yield make
    for task in tasks:
        task.cancel()
    for task in tasks:
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_scraper_follows_changing_values_over_one_keepalive_connection(
    servers: Callable[..., ModelServer],
    collector_factory: Callable[[Datastore], MetricsCollector],
) -> None:
    server = servers()
    await _start_all(server)
    server.waiting = 1
    store = Datastore()
    store.upsert_endpoint("vllm-0", "127.0.0.1", server.port)
    collector = collector_factory(store)

    def waiting() -> int:
        endpoint = store.get("vllm-0")
        assert endpoint is not None
        return endpoint.metrics.waiting_queue_size

    await wait_for(lambda: waiting() == 1, "first scrape")
    endpoint = store.get("vllm-0")
    assert endpoint is not None
    assert endpoint.metrics.kv_cache_usage == 0.4213
    assert endpoint.metrics.active_models == {"sql-lora", "tweet-summary"}
    assert endpoint.metrics.cache_block_size == 16
    assert not is_stale(endpoint, time.monotonic(), threshold=2.0)

    store.on_request_sent("vllm-0")
    server.waiting = 5
    await wait_for(lambda: waiting() == 5, "scrape after the value changed")
    load = store.load_of("vllm-0")
    assert load is not None
    assert (load.inflight, load.sent_since_scrape) == (1, 0)  # the scrape reset the latter

    hits_before = server.hits
    await wait_for(lambda: server.hits >= hits_before + 5, "five more scrapes")
    stats = collector.endpoint_stats("vllm-0")
    assert stats is not None
    assert stats.successes >= 5
    # One pooled session with keep-alive: all scrapes share very few TCP connections
    # (a new one only if a timeout on the loaded box closed the old one).
    assert len(server.peers) <= 1 + stats.timeouts
    # no gzip: inflating the page would cost the picker as much CPU as parsing it
    assert server.accept_encodings == {"identity"}


async def test_failing_endpoints_time_out_back_off_and_go_stale(
    servers: Callable[..., ModelServer],
    collector_factory: Callable[[Datastore], MetricsCollector],
) -> None:
    healthy, hanging, garbage, erroring = (
        servers("ok"),
        servers("hang"),
        servers("garbage"),
        servers("500"),
    )
    await _start_all(healthy, hanging, garbage, erroring)
    store = Datastore()
    for name, server in (
        ("healthy", healthy),
        ("hanging", hanging),
        ("garbage", garbage),
        ("erroring", erroring),
    ):
        store.upsert_endpoint(name, "127.0.0.1", server.port)
    collector = collector_factory(store)

    def stats(name: str) -> tuple[int, int, int, int, int]:
        s = collector.endpoint_stats(name)
        if s is None:  # run() has not started this endpoint's task yet
            return 0, 0, 0, 0, 0
        return s.successes, s.timeouts, s.parse_errors, s.http_errors, s.consecutive_failures

    await wait_for(lambda: stats("hanging")[4] >= 3, "three timeouts in a row")
    await wait_for(lambda: stats("garbage")[4] >= 3, "three parse errors in a row")
    await wait_for(lambda: stats("erroring")[4] >= 3, "three HTTP errors in a row")
    await wait_for(lambda: stats("healthy")[0] >= 3, "healthy scrapes")

    for name, counter in (("hanging", 1), ("garbage", 2), ("erroring", 3)):
        assert stats(name)[0] == 0, name  # never a success
        assert stats(name)[counter] >= 3, name  # failures counted under the right kind
    garbage_stats = collector.endpoint_stats("garbage")
    assert garbage_stats is not None
    assert "malformed sample line" in garbage_stats.last_error

    now = time.monotonic()
    for name in ("hanging", "garbage", "erroring"):
        endpoint = store.get(name)
        assert endpoint is not None
        assert endpoint.metrics.updated_at == 0.0  # never a snapshot from a failed scrape
        assert is_stale(endpoint, now, threshold=0.2)
        s = collector.endpoint_stats(name)
        assert s is not None
        assert s.next_delay > INTERVAL  # backing off, not hammering
        assert s.next_delay <= MAX_BACKOFF

    # Backoff in effect: after the same wall time the erroring server saw far fewer requests
    # than the healthy one (relative counts only; never absolute timings).
    await wait_for(lambda: healthy.hits >= erroring.hits + 10, "healthy outpaces erroring")
    assert collector.stats.failures >= 9
    assert collector.stats.successes >= 3


async def test_endpoint_that_comes_back_after_failing_becomes_fresh(
    servers: Callable[..., ModelServer],
    collector_factory: Callable[[Datastore], MetricsCollector],
) -> None:
    server = servers("ok", fail_first=3)
    await _start_all(server)
    server.waiting = 2
    store = Datastore()
    store.upsert_endpoint("flaky", "127.0.0.1", server.port)
    collector = collector_factory(store)

    def fresh() -> bool:
        endpoint = store.get("flaky")
        return endpoint is not None and endpoint.metrics.updated_at > 0

    await wait_for(fresh, "recovery after three 500s")
    stats = collector.endpoint_stats("flaky")
    assert stats is not None
    assert stats.http_errors == 3
    assert stats.consecutive_failures == 0
    assert stats.next_delay <= INTERVAL  # normal cadence restored at once
    endpoint = store.get("flaky")
    assert endpoint is not None
    assert endpoint.metrics.waiting_queue_size == 2
    assert not is_stale(endpoint, time.monotonic(), threshold=2.0)


async def test_tasks_follow_endpoints_added_and_removed_while_running(
    servers: Callable[..., ModelServer],
    collector_factory: Callable[[Datastore], MetricsCollector],
) -> None:
    server = servers()
    await _start_all(server)
    store = Datastore()
    collector = collector_factory(store)
    await asyncio.sleep(0)  # let run() subscribe
    assert collector.polled_endpoints() == frozenset()

    store.upsert_endpoint("late", "127.0.0.1", server.port)
    await wait_for(lambda: collector.polled_endpoints() == {"late"}, "task for the new endpoint")
    await wait_for(lambda: server.hits >= 2, "scrapes of the new endpoint")

    store.remove_endpoint("late")
    await wait_for(lambda: collector.polled_endpoints() == frozenset(), "task stopped")
    assert collector.endpoint_stats("late") is None
    hits = server.hits
    await asyncio.sleep(INTERVAL * 4)
    assert server.hits <= hits + 1  # at most one request that was already in flight


async def test_stop_returns_and_cancels_polling(servers: Callable[..., ModelServer]) -> None:
    server = servers()
    await _start_all(server)
    store = Datastore()
    store.upsert_endpoint("a", "127.0.0.1", server.port)
    collector = MetricsCollector(store, MappingRegistry(), INTERVAL, TIMEOUT)
    run = asyncio.create_task(collector.run())
    await wait_for(lambda: server.hits >= 1, "first scrape")
    collector.stop()
    await asyncio.wait_for(run, timeout=WAIT)
    assert collector.polled_endpoints() == frozenset()
    hits = server.hits
    await asyncio.sleep(INTERVAL * 3)
    assert server.hits == hits


async def test_engine_label_is_read_on_every_scrape(
    servers: Callable[..., ModelServer],
    collector_factory: Callable[[Datastore], MetricsCollector],
) -> None:
    """A vLLM page read with the SGLang mapping fails; fixing the label fixes the scrape."""
    server = servers()
    await _start_all(server)
    server.waiting = 4
    store = Datastore()
    engine_label = "inference.networking.k8s.io/engine-type"
    store.upsert_endpoint("mislabeled", "127.0.0.1", server.port, {engine_label: "sglang"})
    collector = collector_factory(store)

    def stats() -> tuple[int, int]:
        s = collector.endpoint_stats("mislabeled")
        return (0, 0) if s is None else (s.parse_errors, s.successes)

    await wait_for(lambda: stats()[0] >= 2, "parse errors under the wrong engine label")
    assert stats()[1] == 0
    s = collector.endpoint_stats("mislabeled")
    assert s is not None
    assert "none of the sglang metrics" in s.last_error

    store.upsert_endpoint("mislabeled", "127.0.0.1", server.port, {engine_label: "vllm"})
    await wait_for(lambda: stats()[1] >= 1, "a successful scrape after relabelling")
    endpoint = store.get("mislabeled")
    assert endpoint is not None
    assert endpoint.metrics.waiting_queue_size == 4
