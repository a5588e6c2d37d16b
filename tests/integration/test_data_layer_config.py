"""``dataLayer.sources`` acts: the listed ``metrics-data-source`` decides what is scraped.

A real aiohttp model server on loopback serves the committed vLLM page at ``/custom/metrics``
only (404 elsewhere). The config is loaded and built as the EPP does (parse, build_scheduling,
:func:`data_layer_setup`) and the resulting real collector scrapes it over HTTP.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from kvroute.config.epp_config import parse_epp_config
from kvroute.datalayer.plugins import data_layer_setup
from kvroute.datastore.store import Datastore
from kvroute.plugins.registry import default_registry
from kvroute.scheduling.builder import build_scheduling

pytestmark = pytest.mark.integration

PAGE = (Path(__file__).parents[1] / "testdata" / "metrics" / "vllm.txt").read_text()
HEAD = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"


def _config(path: str | None) -> str:
    params = f", parameters: {{path: {path}}}" if path else ""
    return HEAD + (
        f"plugins:\n- type: queue-scorer\n- {{type: metrics-data-source{params}}}\n"
        "- type: core-metrics-extractor\n"
        "dataLayer:\n  sources:\n  - pluginRef: metrics-data-source\n"
        "    extractors: [{pluginRef: core-metrics-extractor}]\n"
    )


Server = tuple[int, list[str], asyncio.Event]  # port, request paths, set after 3 requests


@pytest.fixture
async def server_port() -> AsyncIterator[Server]:
    paths: list[str] = []
    three_hits = asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        paths.append(request.path)
        if len(paths) >= 3:
            three_hits.set()
        if request.path != "/custom/metrics":
            return web.Response(status=404)
        return web.Response(text=PAGE, content_type="text/plain")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield runner.addresses[0][1], paths, three_hits
    await runner.cleanup()


async def _scrape(text: str, port: int, three_hits: asyncio.Event) -> Datastore:
    config = parse_epp_config(text, "dl.yaml")
    setup = build_scheduling(config, default_registry())
    store = Datastore()
    store.upsert_endpoint("vllm-0", "127.0.0.1", port)
    collector = data_layer_setup(setup.effective_config, setup.plugins).collector(store, 0.05)
    task = asyncio.create_task(collector.run())
    try:
        async with asyncio.timeout(15):  # generous: the box is shared
            await three_hits.wait()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    return store


async def test_listed_source_path_is_scraped(
    server_port: Server,
) -> None:
    port, paths, three_hits = server_port
    store = await _scrape(_config("/custom/metrics"), port, three_hits)
    assert set(paths) == {"/custom/metrics"}
    endpoint = store.get("vllm-0")
    assert endpoint is not None
    assert endpoint.metrics.kv_cache_usage == 0.4213  # the page's value reached the datastore


async def test_default_path_misses_the_custom_page(
    server_port: Server,
) -> None:
    port, paths, three_hits = server_port
    store = await _scrape(_config(None), port, three_hits)
    assert set(paths) == {"/metrics"}
    endpoint = store.get("vllm-0")
    assert endpoint is not None
    assert endpoint.metrics.kv_cache_usage == 0.0  # 404s: nothing scraped
