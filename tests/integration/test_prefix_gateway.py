"""Prefix affinity end to end: a real Envoy, kvroute's EPP with its default profile (queue 2,
kv-cache 2, prefix-cache 3, max-score) and four OpenAI-style servers on loopback.

The servers report equal load (requests are sent one at a time), so the first request of each
prompt family lands on a random server and every later request that shares its prefix must
land on that same server: the only signal that differs is the prefix index that PreRequest
filled when the first one was routed.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from kvroute.gateway.gateway import Gateway
from tests.integration.conftest import MiniModelServer, mini_pool

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

WORDS = ("cache", "block", "prefix", "route", "server", "token", "model", "shared", "prompt")


def _family(seed: int, n_chars: int = 3000) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n_chars // 6))[:n_chars]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[httpx.AsyncClient]:
    tmp: Path = tmp_path_factory.mktemp("prefix-gw")
    servers = [MiniModelServer(f"s{i}") for i in range(4)]
    async with mini_pool(servers), contextlib.AsyncExitStack() as stack:
        gw = await stack.enter_async_context(Gateway([s.url for s in servers], log_dir=tmp))
        for _ in range(200):  # wait for the first scrape of every server
            if all(e.metrics.updated_at > 0 for e in gw.epp.datastore.endpoints()):
                break
            await asyncio.sleep(0.02)
        client = await stack.enter_async_context(httpx.AsyncClient(base_url=gw.url, timeout=30))
        yield client


async def _served(client: httpx.AsyncClient, path: str, body: dict[str, object]) -> str:
    r = await client.post(path, json={"model": "base", "max_tokens": 1, **body})
    assert r.status_code == 200, r.text
    return r.headers["x-sim-server"]


async def test_completions_with_a_shared_prefix_follow_the_first(
    gateway: httpx.AsyncClient,
) -> None:
    families = [_family(seed) for seed in range(8)]
    first = [await _served(gateway, "/v1/completions", {"prompt": f}) for f in families]
    assert len(set(first)) > 1  # ties are broken at random: families spread out
    for round_ in range(2):
        for family, home in zip(families, first, strict=True):
            prompt = f"{family} follow-up question {round_}"
            assert await _served(gateway, "/v1/completions", {"prompt": prompt}) == home


async def test_chat_sessions_stick_to_the_server_holding_their_history(
    gateway: httpx.AsyncClient,
) -> None:
    sessions = [[{"role": "system", "content": _family(100 + s)}] for s in range(6)]
    homes = []
    for messages in sessions:
        messages.append({"role": "user", "content": "first question"})
        homes.append(await _served(gateway, "/v1/chat/completions", {"messages": messages}))
    for turn in range(3):
        for messages, home in zip(sessions, homes, strict=True):
            messages.append({"role": "assistant", "content": f"answer {turn} " * 20})
            messages.append({"role": "user", "content": f"question {turn + 2}"})
            got = await _served(gateway, "/v1/chat/completions", {"messages": messages})
            assert got == home
