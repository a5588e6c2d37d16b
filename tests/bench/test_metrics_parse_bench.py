"""Metrics parsing and scraping cost: how many endpoints one core keeps fresh at 50 ms.

Run::

    .venv/bin/pytest -m bench --benchmark-enable tests/bench/test_metrics_parse_bench.py

Group ``vllm-page`` compares, in one run, kvroute's select-and-parse + extract of the full vLLM
fixture page with ``prometheus_client.parser`` on the same page (the table's parenthesised
factors are the ratios). Group ``scrape-cpu`` measures the client-side CPU time of HTTP scrapes
over loopback keep-alive connections against a server in another process (so its CPU is not
counted), sequentially and 50 at a time. ``test_endpoints_one_core_keeps_fresh`` runs the real
:class:`MetricsCollector` on 40 endpoints for a few seconds and divides the process CPU time by
the number of scrapes; it prints both that end-to-end figure and the brief's formula
``0.05 s / (parse + per-scrape HTTP overhead)``.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kvroute.datalayer.mappings import MappingRegistry, extract_result
from kvroute.datalayer.prometheus import SeriesSelector, decode_page
from kvroute.datalayer.scraper import MetricsCollector
from kvroute.datastore.store import Datastore

pytestmark = pytest.mark.bench

PAGE_PATH = Path(__file__).parents[1] / "testdata" / "metrics" / "vllm.txt"
PAGE = PAGE_PATH.read_text()
MAPPING = MappingRegistry().default

SERVER = r"""
import asyncio, sys
from aiohttp import web

page = open(sys.argv[1], "rb").read()

async def metrics(request):
    return web.Response(body=page, content_type="text/plain")

async def main():
    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def server_port() -> Iterator[int]:
    """A /metrics server in a separate process, serving the vLLM fixture page."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(PAGE_PATH)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def _fresh_page_args() -> Iterator[tuple[tuple[str, Any, float], dict[str, Any]]]:
    """Pages whose gauge values differ on every call, as between two real scrapes."""
    head, rest = PAGE.split("vllm:num_requests_waiting{", 1)
    line_end = rest.index("\n")
    waiting_line, tail = rest[:line_end], rest[line_end:]
    labels = waiting_line[: waiting_line.index("}") + 1]
    n = 0
    while True:
        n += 1
        page = f"{head}vllm:num_requests_waiting{{{labels} {n}.0{tail}"
        yield (page, MAPPING, 1.0), {}


@pytest.mark.benchmark(group="vllm-page")
def test_kvroute_parse_and_extract_full_vllm_page(benchmark: Any) -> None:
    """Steady state: the waiting-queue line changes on every scrape, info lines do not."""
    pages = _fresh_page_args()
    result = benchmark.pedantic(extract_result, setup=lambda: next(pages), rounds=5000)
    assert result.metrics.waiting_queue_size > 0
    assert result.missing == ()


@pytest.mark.benchmark(group="vllm-page")
def test_kvroute_parse_and_extract_cold(benchmark: Any) -> None:
    """Worst case: nothing memoised (first scrape, or every line changed)."""
    pages = _fresh_page_args()

    def setup() -> tuple[tuple[str, Any, float], dict[str, Any]]:
        MAPPING.selector._memo.clear()
        return next(pages)

    result = benchmark.pedantic(extract_result, setup=setup, rounds=5000)
    assert result.metrics.cache_num_blocks == 27153


@pytest.mark.benchmark(group="vllm-page")
def test_kvroute_select_only(benchmark: Any) -> None:
    selector = SeriesSelector(s.name for s in MAPPING.specs())
    selected = benchmark(selector.select, PAGE)
    assert set(selected) == {
        "vllm:num_requests_waiting",
        "vllm:num_requests_running",
        "vllm:kv_cache_usage_perc",
        "vllm:lora_requests_info",
        "vllm:cache_config_info",
    }


@pytest.mark.benchmark(group="vllm-page")
def test_prometheus_client_parse_selected_lines(benchmark: Any) -> None:
    """The alternative the brief names first: select cheaply, parse with prometheus_client."""
    selector = SeriesSelector(s.name for s in MAPPING.specs())

    def run() -> int:
        lines = [line for lines in selector.select(PAGE).values() for line in lines]
        return sum(len(f.samples) for f in text_string_to_metric_families("\n".join(lines)))

    assert benchmark(run) == 7


@pytest.mark.benchmark(group="vllm-page")
def test_prometheus_client_parse_whole_page(benchmark: Any) -> None:
    families = benchmark(lambda: list(text_string_to_metric_families(PAGE)))
    assert len(families) == 80


async def _scrape_batch(session: aiohttp.ClientSession, url: str, n: int, concurrency: int) -> None:
    async def one() -> None:
        async with session.get(url) as response:
            decode_page(await response.read())

    for _ in range(n // concurrency):
        await asyncio.gather(*(one() for _ in range(concurrency)))


def _http_cpu_per_scrape(port: int, concurrency: int, n: int = 400, rounds: int = 5) -> float:
    """Median client CPU seconds per HTTP scrape (fetch + decode, no parse)."""

    async def main() -> list[float]:
        url = f"http://127.0.0.1:{port}/metrics"
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=10.0)
        async with aiohttp.ClientSession(connector=connector) as session:
            await _scrape_batch(session, url, concurrency * 2, concurrency)  # warm connections
            samples = []
            for _ in range(rounds):
                start = time.process_time()
                await _scrape_batch(session, url, n, concurrency)
                samples.append((time.process_time() - start) / n)
            return samples

    return statistics.median(asyncio.run(main()))


@pytest.mark.parametrize("concurrency", [1, 50], ids=["sequential", "50-concurrent"])
@pytest.mark.benchmark(group="scrape-cpu", timer=time.process_time)
def test_http_scrape_cpu_on_loopback(benchmark: Any, server_port: int, concurrency: int) -> None:
    n = 50 if benchmark.disabled else 400  # a quick smoke run in the default test suite
    per_scrape = benchmark.pedantic(
        _http_cpu_per_scrape, args=(server_port, concurrency, n), rounds=1, iterations=1
    )
    benchmark.extra_info["cpu_per_scrape_us"] = round(per_scrape * 1e6, 1)
    print(f"\nHTTP scrape CPU ({concurrency} at a time): {per_scrape * 1e6:.0f} us per scrape")
    assert per_scrape > 0


def _median_seconds(fn: Any, repeat: int = 2000) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def test_endpoints_one_core_keeps_fresh(benchmark: Any, server_port: int) -> None:
    """End to end: the real collector, 40 endpoints at 50 ms, CPU seconds per scrape."""
    endpoints = 40
    seconds = 0.3 if benchmark.disabled else 4.0  # a quick smoke run in the default suite

    async def main() -> tuple[float, int, int]:
        store = Datastore()
        for i in range(endpoints):
            store.upsert_endpoint(f"vllm-{i}", "127.0.0.1", server_port)
        collector = MetricsCollector(store, MappingRegistry(), 0.05, 0.04)
        task = asyncio.create_task(collector.run())
        await asyncio.sleep(0.5)  # connections up
        ok0, start = collector.stats.successes, time.process_time()
        await asyncio.sleep(seconds)
        cpu, ok = time.process_time() - start, collector.stats.successes - ok0
        failures = collector.stats.failures
        collector.stop()
        await task
        return cpu, ok, failures

    cpu, ok, failures = benchmark.pedantic(lambda: asyncio.run(main()), rounds=1, iterations=1)
    cpu_per_scrape = cpu / ok
    pages = _fresh_page_args()

    def parse_one() -> None:
        args, _ = next(pages)
        extract_result(*args)

    parse = _median_seconds(parse_one)  # includes building the varied page: an upper bound
    http = _http_cpu_per_scrape(server_port, concurrency=50, n=50 if benchmark.disabled else 400)
    formula = 0.05 / (parse + http)
    end_to_end = 0.05 / cpu_per_scrape
    benchmark.extra_info.update(
        parse_us=round(parse * 1e6, 1),
        http_cpu_per_scrape_us=round(http * 1e6, 1),
        endpoints_per_core_formula=int(formula),
        collector_cpu_per_scrape_us=round(cpu_per_scrape * 1e6, 1),
        endpoints_per_core_end_to_end=int(end_to_end),
        scrapes=ok,
        failures=failures,
    )
    print(
        f"\nparse+extract median {parse * 1e6:.0f} us; HTTP client CPU {http * 1e6:.0f} us/scrape"
        f" -> 0.05 s / (parse + HTTP) = {formula:.0f} endpoints per core"
        f"\ncollector end to end: {ok} scrapes ({failures} failed) of {endpoints} endpoints in"
        f" {seconds:.1f} s, {cpu_per_scrape * 1e6:.0f} us CPU per scrape"
        f" -> {end_to_end:.0f} endpoints per core at 50 ms"
    )
    assert ok > 0
