"""Precise prefix routing through the real gateway: Envoy, kvroute's EPP with
``precise-prefix-cache-scorer`` (queue 2, kv-cache 2, precise prefix 3) and three model servers
that publish vLLM-shaped KV events on ZMQ.

The servers are the shared ``MiniModelServer`` plus a KV-event publisher: on every request they
tokenize the prompt with the same local tokenizer directory the EPP is configured with and
publish ``BlockStored`` for its full 16-token blocks (engine hashes are the server's own
counters), as a vLLM engine with prefix caching would; a test can also make a server evict
(``BlockRemoved``) or report blocks it cached some other way. Each publisher binds the serving
port + 1000, the scorer's default ``kvEventsPortOffset`` convention.

The EPP is built by a backend factory around :func:`kvroute.wiring.build_epp`, the production
wiring, which runs this plugin's lifecycle: ``attach(datastore)`` (subscribe to every endpoint,
follow adds/removes), ``run_background()`` while the app runs and ``aclose()`` at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import httpx
import pytest
import pytest_asyncio
import zmq
import zmq.asyncio
from aiohttp import web

from kvroute.app import BuiltBackend
from kvroute.config.epp_config import parse_epp_config
from kvroute.datalayer.kvevents import BlockRemoved, BlockStored, KvEventBatch, encode_message
from kvroute.datalayer.tokenization import PromptTokenizer
from kvroute.datastore.store import Datastore
from kvroute.extproc.director_backend import Codec, DirectorBackend
from kvroute.extproc.response_filter import OpenAIResponseFilter
from kvroute.gateway.gateway import Gateway
from kvroute.observability.metrics import EppMetrics
from kvroute.plugins.registry import default_registry
from kvroute.protocol.openai import parse_request, rewrite_request_body
from kvroute.scheduling.plugins.prefix.hashing import token_block_hashes, token_root_hash
from kvroute.scheduling.plugins.prefix.precise import PrecisePrefixCacheScorer
from kvroute.scheduling.plugins.prefix.precise_index import ServerSync
from kvroute.scheduling.request import ApiKind, InferenceRequest
from kvroute.settings import EppSettings
from kvroute.wiring import build_epp
from tests.integration.conftest import MiniModelServer, mini_pool
from tests.unit.datalayer.test_tokenization import write_tokenizer_dir

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

BLOCK = 16


@dataclass
class KvMiniServer(MiniModelServer):
    tokenizer: PromptTokenizer | None = None
    ctx: zmq.asyncio.Context | None = None
    pub: zmq.asyncio.Socket | None = None
    seq: int = 0
    engine_ids: dict[tuple[int, ...], int] = field(default_factory=dict)

    async def start(self) -> None:
        await super().start()
        assert self.ctx is not None
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.bind(f"tcp://127.0.0.1:{self.port + 1000}")

    async def stop(self) -> None:
        if self.pub is not None:
            self.pub.close(0)
        await super().stop()

    async def publish(self, *events: BlockStored | BlockRemoved) -> None:
        assert self.pub is not None
        frames = encode_message(f"kv@{self.name}@base", self.seq, KvEventBatch(0.0, events))
        await self.pub.send_multipart(frames)
        self.seq += 1

    def blocks_of(self, prompt: str) -> BlockStored:
        assert self.tokenizer is not None
        request = InferenceRequest(
            request_id="x",
            incoming_model="base",
            target_model="base",
            api=ApiKind.COMPLETIONS,
            body=MappingProxyType({"prompt": prompt}),
        )
        ids = list(self.tokenizer.encode_request(request) or [])
        n = len(ids) // BLOCK
        hashes = []
        for i in range(n):
            key = tuple(ids[: (i + 1) * BLOCK])
            hashes.append(self.engine_ids.setdefault(key, len(self.engine_ids) + 1))
        return BlockStored(tuple(hashes), None, tuple(ids[: n * BLOCK]), BLOCK)

    async def _complete(self, req: web.Request) -> web.StreamResponse:
        body = json.loads(await req.read())
        await self.publish(self.blocks_of(str(body.get("prompt", ""))))
        return await super()._complete(req)


def precise_backend_factory(
    config_text: str, plugins: list[PrecisePrefixCacheScorer]
) -> Callable[[EppSettings, Datastore, EppMetrics], Awaitable[BuiltBackend]]:
    async def factory(
        settings: EppSettings, datastore: Datastore, metrics: EppMetrics
    ) -> BuiltBackend:
        registry = default_registry(include_entry_points=False)
        graph = build_epp(
            parse_epp_config(config_text),
            datastore,
            registry=registry,
            source="<test>",
            scrape_interval_s=settings.refresh_metrics_interval_s,
        )
        codec = Codec(
            parse_request=parse_request,
            rewrite_request_body=rewrite_request_body,
            response_filter=OpenAIResponseFilter,
        )
        plugins.extend(
            p for p in graph.setup.plugins.values() if isinstance(p, PrecisePrefixCacheScorer)
        )
        return BuiltBackend(backend=DirectorBackend(graph.director, codec, metrics), graph=graph)

    return factory


@dataclass
class Stack:
    client: httpx.AsyncClient
    servers: list[KvMiniServer]
    scorer: PrecisePrefixCacheScorer
    endpoint_of: dict[str, str]  # server name -> the EPP's endpoint name for it

    def by_name(self, name: str) -> KvMiniServer:
        return next(s for s in self.servers if s.name == name)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    tmp: Path = tmp_path_factory.mktemp("precise-gw")
    directory = write_tokenizer_dir(tmp / "tokenizer")
    tokenizer = PromptTokenizer.from_directory(directory)
    config = f"""\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: precise-prefix-cache-scorer
  parameters: {{tokenizer: "{directory}", blockSizeTokens: {BLOCK}}}
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - {{pluginRef: queue-scorer, weight: 2}}
  - {{pluginRef: kv-cache-utilization-scorer, weight: 2}}
  - {{pluginRef: precise-prefix-cache-scorer, weight: 3}}
  - {{pluginRef: max-score-picker}}
"""
    ctx = zmq.asyncio.Context()
    servers = [KvMiniServer(f"s{i}", tokenizer=tokenizer, ctx=ctx) for i in range(3)]
    plugins: list[PrecisePrefixCacheScorer] = []
    try:
        async with mini_pool(servers), contextlib.AsyncExitStack() as stack_:
            factory = precise_backend_factory(config, plugins)
            gw = await stack_.enter_async_context(
                Gateway([s.url for s in servers], log_dir=tmp, backend_factory=factory)
            )
            (scorer,) = plugins
            store = gw.epp.datastore
            endpoint_of = {}
            for s in servers:
                endpoint = store.by_hostport(s.hostport)
                assert endpoint is not None
                endpoint_of[s.name] = endpoint.name
            for _ in range(500):  # scraped, and every subscription has seen a batch
                for s in servers:
                    await s.publish()
                ready = all(e.metrics.updated_at > 0 for e in store.endpoints())
                synced = all(
                    scorer.index.sync_state(name) is ServerSync.SYNCED
                    for name in endpoint_of.values()
                )
                if ready and synced:
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("KV event subscriptions never synced")
            client = await stack_.enter_async_context(
                httpx.AsyncClient(base_url=gw.url, timeout=30)
            )
            yield Stack(client, servers, scorer, endpoint_of)
    finally:
        ctx.term()


def _prompt(seed: int, n: int = 600) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice("abcdefgh ") for _ in range(n))


async def _served(stack: Stack, prompt: str) -> str:
    r = await stack.client.post(
        "/v1/completions", json={"model": "base", "prompt": prompt, "max_tokens": 1}
    )
    assert r.status_code == 200, r.text
    return r.headers["x-sim-server"]


async def _until_held(stack: Stack, server: str, prompt: str, expect: bool) -> None:
    """Wait until the EPP's index says ``server`` holds all of ``prompt``'s blocks (or none)."""
    stored = stack.by_name(server).blocks_of(prompt)
    hashes = token_block_hashes(stored.token_ids, block_size=BLOCK, root=token_root_hash(""))
    endpoint = stack.endpoint_of[server]

    def held() -> bool:
        # judged at the current time, so the 2 s speculative entry PreRequest wrote expires too
        now = time.monotonic()
        count = stack.scorer.index.matched_blocks(hashes, [endpoint], now)[endpoint]
        return count == (len(hashes) if expect else 0)

    for _ in range(500):
        if held():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{server} never {'held' if expect else 'dropped'} the prompt")


async def test_repeated_prefixes_land_where_the_servers_report_them(stack: Stack) -> None:
    prompts = [_prompt(seed) for seed in range(6)]
    homes = []
    for p in prompts:
        home = await _served(stack, p)
        await _until_held(stack, home, p, expect=True)  # the server's BlockStored arrived
        homes.append(home)
    assert len(set(homes)) > 1
    for p, home in zip(prompts, homes, strict=True):
        assert await _served(stack, p + " and then some") == home


async def test_evicted_prefix_stops_attracting_and_follows_the_new_holder(stack: Stack) -> None:
    prompt = _prompt(1000)
    home = await _served(stack, prompt)
    await _until_held(stack, home, prompt, expect=True)
    old = stack.by_name(home)
    await old.publish(BlockRemoved(old.blocks_of(prompt).block_hashes))
    await _until_held(stack, home, prompt, expect=False)
    other = next(s for s in stack.servers if s.name != home)
    await other.publish(other.blocks_of(prompt))  # e.g. it cached the prompt for another client
    await _until_held(stack, other.name, prompt, expect=True)
    for i in range(3):
        assert await _served(stack, f"{prompt} question {i}") == other.name
