"""The whole path with the project's simulator: Envoy -> kvroute EPP (precise prefix scorer) ->
three ``kvroute_sim`` servers that cache prefixes and publish vLLM KV events on ZMQ.

The servers and the EPP share one Hugging Face tokenizer directory (the simulator's own
``make_tokenizer``: a byte-level BPE with a chat template), so the EPP hashes the token ids the
engines cache. Each server's KV events are published on its HTTP port + 1000, the scorer's
default ``kvEventsPortOffset`` convention, so no per-endpoint configuration is needed. The
engines use the ``tiny`` profile with 2,048 KV blocks, enough that nothing is evicted here
(eviction is covered in ``test_prefix_kv_events.py``).

Checked: a chat conversation's follow-ups land on the server whose engine reported its blocks;
after that server's cache is reset (``/reset_prefix_cache`` -> ``AllBlocksCleared``) and
another server caches the same prefix, the conversation follows the new holder.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import httpx
import pytest
import pytest_asyncio

from kvroute.datalayer.tokenization import PromptTokenizer
from kvroute.gateway.gateway import Gateway
from kvroute.scheduling.plugins.prefix.hashing import token_block_hashes, token_root_hash
from kvroute.scheduling.plugins.prefix.precise import PrecisePrefixCacheScorer
from kvroute.scheduling.plugins.prefix.precise_index import ServerSync
from kvroute.scheduling.request import ApiKind, InferenceRequest
from kvroute_sim.cluster import SimCluster
from kvroute_sim.text import make_tokenizer
from tests.integration.test_prefix_gateway_kv_events import precise_backend_factory

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


@dataclass
class Stack:
    client: httpx.AsyncClient
    sims: SimCluster
    scorer: PrecisePrefixCacheScorer
    tokenizer: PromptTokenizer
    endpoint_of: dict[str, str]  # sim server name -> EPP endpoint name
    direct: httpx.AsyncClient

    def url_of(self, name: str) -> str:
        return next(s.url for s in self.sims.servers if s.name == name)


def _config(directory: Path) -> str:
    return f"""\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: precise-prefix-cache-scorer
  parameters: {{tokenizer: "{directory}"}}
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - {{pluginRef: queue-scorer, weight: 2}}
  - {{pluginRef: kv-cache-utilization-scorer, weight: 2}}
  - {{pluginRef: precise-prefix-cache-scorer, weight: 3}}
  - {{pluginRef: max-score-picker}}
"""


def _free_port_base(n: int) -> int:
    """A base port such that base..base+n-1 and base+1000.. are free on loopback now."""
    rng = random.Random(time.time_ns())
    for _ in range(50):
        base = rng.randrange(21000, 39000, 10)
        ports = [base + i for i in range(n)] + [base + 1000 + i for i in range(n)]
        with contextlib.ExitStack() as probes:
            try:
                for port in ports:
                    sock = probes.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return base
    raise AssertionError("no free port range found")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    tmp = tmp_path_factory.mktemp("sim-precise")
    directory = make_tokenizer(tmp / "tokenizer")
    base = _free_port_base(3)
    sims = SimCluster(
        3,
        profile="tiny",
        base_port=base,
        kv_events_base_port=base + 1000,
        tokenizer=str(directory),
        model=MODEL,
        engine_overrides={"kv_events": True, "max_model_len": 1024, "num_gpu_blocks": 2048},
    )
    plugins: list[PrecisePrefixCacheScorer] = []
    async with sims, contextlib.AsyncExitStack() as stack_:
        gw = await stack_.enter_async_context(
            Gateway(
                sims.urls,
                log_dir=tmp,
                backend_factory=precise_backend_factory(_config(directory), plugins),
            )
        )
        (scorer,) = plugins
        store = gw.epp.datastore
        endpoint_of = {}
        for s in sims.servers:
            endpoint = store.by_hostport(f"127.0.0.1:{s.port}")
            assert endpoint is not None
            endpoint_of[s.name] = endpoint.name
        client = await stack_.enter_async_context(httpx.AsyncClient(base_url=gw.url, timeout=30))
        direct = await stack_.enter_async_context(httpx.AsyncClient(timeout=30))
        tokenizer = PromptTokenizer.from_directory(directory)
        yield Stack(client, sims, scorer, tokenizer, endpoint_of, direct)


def _conversation(seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    words = ("system", "prompt", "question", "answer", "tokens", "cache", "block", "route", "w1")
    system = " ".join(rng.choice(words) for _ in range(120))
    return [{"role": "system", "content": system}, {"role": "user", "content": "first question"}]


def _hashes(stack: Stack, messages: list[dict[str, Any]]) -> list[int]:
    request = InferenceRequest(
        request_id="x",
        incoming_model=MODEL,
        target_model=MODEL,
        api=ApiKind.CHAT_COMPLETIONS,
        body=MappingProxyType({"messages": messages}),
    )
    tokens = stack.tokenizer.encode_request(request)
    assert tokens is not None
    return token_block_hashes(tokens, block_size=16, root=token_root_hash(""))


async def _held(stack: Stack, server: str, messages: list[dict[str, Any]], blocks: int) -> None:
    """Wait until the EPP's index says ``server`` holds exactly ``blocks`` leading blocks."""
    hashes = _hashes(stack, messages)
    endpoint = stack.endpoint_of[server]
    for _ in range(500):
        now = time.monotonic()  # speculative entries from PreRequest expire on this clock
        if stack.scorer.index.matched_blocks(hashes, [endpoint], now)[endpoint] == blocks:
            return
        await asyncio.sleep(0.01)
    got = stack.scorer.index.matched_blocks(hashes, [endpoint], time.monotonic())[endpoint]
    raise AssertionError(f"{server}: index holds {got} blocks, expected {blocks}")


async def _chat(client: httpx.AsyncClient, url: str, messages: list[dict[str, Any]]) -> str:
    body = {"model": MODEL, "messages": messages, "max_tokens": 2}
    r = await client.post(f"{url}/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return r.headers["x-sim-server"]


async def test_subscriptions_follow_the_port_convention(stack: Stack) -> None:
    for s in stack.sims.servers:
        assert s.kv_events_endpoint == f"tcp://127.0.0.1:{s.port + 1000}"
    assert stack.scorer.subscriber is not None
    assert sorted(stack.scorer.subscriber.subscriptions.values()) == sorted(
        f"tcp://127.0.0.1:{s.port + 1000}" for s in stack.sims.servers
    )


async def test_conversations_follow_the_engine_that_cached_them(stack: Stack) -> None:
    conversations = [_conversation(seed) for seed in range(4)]
    homes = []
    for messages in conversations:
        home = await _chat(stack.client, "", messages)
        # the prompt's full blocks, minus the last token vLLM always recomputes
        await _held(stack, home, messages, len(_hashes(stack, messages)))
        homes.append(home)
    for turn in range(2):
        for messages, home in zip(conversations, homes, strict=True):
            messages.append({"role": "assistant", "content": f"answer number {turn}"})
            messages.append({"role": "user", "content": f"question number {turn + 2}"})
            assert await _chat(stack.client, "", messages) == home


async def test_reset_cache_moves_the_conversation_to_the_new_holder(stack: Stack) -> None:
    messages = _conversation(99)
    home = await _chat(stack.client, "", messages)
    blocks = len(_hashes(stack, messages))
    await _held(stack, home, messages, blocks)
    r = await stack.direct.post(f"{stack.url_of(home)}/reset_prefix_cache")
    assert r.status_code == 200, r.text
    # The engine publishes AllBlocksCleared with its next step's events, as vLLM does: make it
    # step with an unrelated request.
    await _chat(stack.direct, stack.url_of(home), [{"role": "user", "content": "hi"}])
    await _held(stack, home, messages, 0)  # AllBlocksCleared reached the EPP
    other = next(s.name for s in stack.sims.servers if s.name != home)
    assert await _chat(stack.direct, stack.url_of(other), messages) == other  # bypass the EPP
    await _held(stack, other, messages, blocks)
    messages.append({"role": "assistant", "content": "ok"})
    messages.append({"role": "user", "content": "and now?"})
    assert await _chat(stack.client, "", messages) == other


async def test_all_subscriptions_synced(stack: Stack) -> None:
    states = {stack.scorer.index.sync_state(e) for e in stack.endpoint_of.values()}
    assert states <= {ServerSync.SYNCED, None}
