"""Precise prefix routing over real ZMQ: simulated vLLM engines publish KV events, the
``precise-prefix-cache-scorer`` subscribes (through the datastore, by the endpoint label
convention) and scores from what the engines really hold.

Each "server" is the project's simulator engine (``kvroute_sim.engine.Engine``, prefix caching by
chained block hashes, tiny KV of 64 blocks so eviction is quick) stepped in-process, plus a real
ZMQ PUB socket on loopback that publishes the engine's events in vLLM's wire format
(``[topic, seq, msgpack batch]``). The engine's block hashes are its own (xxh3 over its chain),
unrelated to kvroute's; the scorer still agrees with it because it re-chains the token ids.
Token ids come from the same local tokenizer directory on both sides, as a real deployment
shares the model's tokenizer.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import pytest
import pytest_asyncio
import zmq
import zmq.asyncio

from kvroute.datalayer.kvevents import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    KvEvent,
    KvEventBatch,
    encode_message,
)
from kvroute.datalayer.tokenization import PromptTokenizer
from kvroute.datastore.store import Datastore
from kvroute.scheduling.interfaces import CycleState
from kvroute.scheduling.plugins.prefix.precise import (
    KV_EVENTS_ENDPOINT_LABEL,
    PrecisePrefixCacheScorer,
    PrecisePrefixParams,
)
from kvroute.scheduling.plugins.prefix.precise_index import ServerSync
from kvroute.scheduling.request import ApiKind, InferenceRequest
from kvroute_sim import kvcache
from kvroute_sim.config import engine_profile
from kvroute_sim.engine import Engine, SimRequest
from tests.unit.datalayer.test_tokenization import write_tokenizer_dir

pytestmark = pytest.mark.integration

_ids = itertools.count()


def _to_wire(event: kvcache.KVEvent) -> KvEvent:
    if isinstance(event, kvcache.BlockStored):
        return BlockStored(
            event.block_hashes, event.parent_block_hash, event.token_ids, event.block_size
        )
    if isinstance(event, kvcache.BlockRemoved):
        return BlockRemoved(event.block_hashes)
    return AllBlocksCleared()


@dataclass
class SimServer:
    """One simulated engine and its KV-event publisher."""

    name: str
    ctx: zmq.asyncio.Context
    engine: Engine = field(init=False)
    pub: zmq.asyncio.Socket = field(init=False)
    port: int = 0
    seq: int = 0
    clock: float = 0.0

    def __post_init__(self) -> None:
        self.start_engine()

    def start_engine(self) -> None:
        self.engine = Engine(engine_profile("tiny", kv_events=True))
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        if self.port:
            self.pub.bind(f"tcp://127.0.0.1:{self.port}")
        else:
            self.port = self.pub.bind_to_random_port("tcp://127.0.0.1")
        self.seq = 0

    @property
    def address(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    async def publish(self, events: list[KvEvent]) -> None:
        batch = KvEventBatch(self.clock, tuple(events))
        await self.pub.send_multipart(encode_message(f"kv@{self.name}@m", self.seq, batch))
        self.seq += 1

    async def serve(self, token_ids: list[int]) -> None:
        """Run one request to completion, publishing every step's KV events."""
        req = SimRequest(f"r{next(_ids)}", prompt_token_ids=token_ids, max_tokens=2)
        req.arrival_time = self.clock
        self.engine.add_request(req)
        while not req.finished:
            out = self.engine.step(self.clock)
            self.clock = out.end + 1e-3
            if out.kv_events:
                await self.publish([_to_wire(e) for e in out.kv_events])


@dataclass
class Cluster:
    servers: dict[str, SimServer]
    scorer: PrecisePrefixCacheScorer
    store: Datastore
    tokenizer: PromptTokenizer

    def ids(self, prompt: str) -> list[int]:
        return list(self.tokenizer.encode_text(prompt))

    def scores(self, prompt: str) -> dict[str, float]:
        request = InferenceRequest(
            request_id="q",
            incoming_model="m",
            target_model="m",
            api=ApiKind.COMPLETIONS,
            body=MappingProxyType({"prompt": prompt}),
        )
        endpoints = self.store.endpoints()
        state = CycleState(time.monotonic())
        self.scorer.prepare_data(state, request, endpoints)
        return dict(self.scorer.score(state, request, endpoints))

    def route(self, prompt: str) -> str:
        scores = self.scores(prompt)
        return max(sorted(scores), key=lambda n: scores[n])


async def until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10.0
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    ctx = zmq.asyncio.Context()
    tokenizer = PromptTokenizer.from_directory(write_tokenizer_dir(tmp_path / "tok"))
    servers = {n: SimServer(n, ctx) for n in ("s0", "s1", "s2")}
    store = Datastore()
    for i, s in enumerate(servers.values()):
        store.upsert_endpoint(s.name, "127.0.0.1", 8000 + i, {KV_EVENTS_ENDPOINT_LABEL: s.address})
    params = PrecisePrefixParams(speculativeTtlSeconds=0, reorderWindow=0)
    scorer = PrecisePrefixCacheScorer("precise", params, tokenizer=tokenizer)
    scorer.attach(store)  # the lifecycle kvroute.wiring.build_epp runs: attach, run, aclose
    runner = asyncio.create_task(scorer.run_background())
    try:
        # Slow joiners: publish empty batches until every subscription has seen one.
        for s in servers.values():
            while scorer.index.sync_state(s.name) is None:
                await s.publish([])
                await asyncio.sleep(0.01)
        yield Cluster(servers, scorer, store, tokenizer)
    finally:
        await scorer.aclose()
        assert runner.done()
        for s in servers.values():
            s.pub.close(0)
        ctx.term()


def _prompt(tag: str, n: int = 200) -> str:
    return (tag * n)[:n]


async def test_repeated_prefix_lands_where_the_engine_cached_it(cluster: Cluster) -> None:
    prompt = _prompt("shared system prompt. ")
    await cluster.servers["s1"].serve(cluster.ids(prompt))
    await until(lambda: cluster.scores(prompt)["s1"] > 0.9, "s1's BlockStored events")
    follow_up = prompt + " and a new question"
    scores = cluster.scores(follow_up)
    assert scores["s0"] == scores["s2"] == 0.0
    assert scores["s1"] > 0.8
    assert cluster.route(follow_up) == "s1"


async def test_evicted_prefix_no_longer_attracts(cluster: Cluster) -> None:
    server = cluster.servers["s2"]
    prompt = _prompt("evict me soon. ")
    await server.serve(cluster.ids(prompt))
    await until(lambda: cluster.scores(prompt)["s2"] > 0.9, "stored")
    # 64 blocks of 16 tokens: six other ~200-token prompts push the first one out (LRU)
    for i in range(8):
        await server.serve(cluster.ids(_prompt(f"filler number {i}. ")))
    await until(lambda: cluster.scores(prompt)["s2"] == 0.0, "BlockRemoved events")
    assert cluster.scores(_prompt("filler number 7. "))["s2"] > 0.9


async def test_cache_reset_and_engine_restart_clear_the_server(cluster: Cluster) -> None:
    prompt = _prompt("reset me. ")
    server = cluster.servers["s0"]
    await server.serve(cluster.ids(prompt))
    await until(lambda: cluster.scores(prompt)["s0"] > 0.9, "stored")
    assert server.engine.pool.reset_prefix_cache()
    await server.publish([_to_wire(e) for e in server.engine.pool.events])
    server.engine.pool.events.clear()
    await until(lambda: cluster.scores(prompt)["s0"] == 0.0, "AllBlocksCleared")

    await server.serve(cluster.ids(prompt))
    await until(lambda: cluster.scores(prompt)["s0"] > 0.9, "stored again")
    # The engine restarts: a fresh cache and a publisher whose sequence starts over at 0.
    server.pub.close(0)
    index = cluster.scorer.index
    await until(lambda: index.sync_state("s0") is ServerSync.UNKNOWN, "the disconnect")
    assert cluster.scores(prompt)["s0"] == 0.0  # never trusted while the stream is down
    server.start_engine()
    while index.sync_state("s0") is not ServerSync.SYNCED:  # reconnected: seq 0 is a baseline
        await server.publish([])
        await asyncio.sleep(0.01)
    await server.serve(cluster.ids(_prompt("after restart. ")))
    await until(
        lambda: cluster.scores(_prompt("after restart. "))["s0"] > 0.9, "events after restart"
    )
    assert cluster.scores(prompt)["s0"] == 0.0
