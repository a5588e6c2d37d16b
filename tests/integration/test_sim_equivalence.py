"""Requests served over HTTP get exactly the timings a virtual-time replay of them gives."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from kvroute_sim.cluster import SimCluster
from kvroute_sim.engine import Engine, SimRequest, StepOutcome
from kvroute_sim.virtual import VirtualServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
MODEL = "meta-llama/Llama-3.1-8B-Instruct"


async def test_http_served_timings_equal_the_virtual_replay() -> None:
    seen: dict[str, SimRequest] = {}
    times: dict[str, list[float]] = {}
    async with SimCluster(n=1, profile="tiny", loras=["ad-1"]) as cluster:
        server = cluster.servers[0]
        original = server.shell.on_step

        def record(out: StepOutcome) -> None:
            for r in out.emitted:
                seen[r.request_id] = r
                times.setdefault(r.request_id, []).append(out.end)
            if original is not None:
                original(out)

        server.shell.on_step = record
        shared = " ".join(f"s{i}" for i in range(40))
        bodies = [
            {"model": MODEL, "prompt": f"{shared} one", "max_tokens": 9},
            {"model": "ad-1", "prompt": "short prompt", "max_tokens": 5},
            {"model": MODEL, "prompt": f"{shared} two three", "max_tokens": 7, "stream": True},
            {"model": MODEL, "prompt": " ".join(f"x{i}" for i in range(150)), "max_tokens": 4},
        ]
        async with aiohttp.ClientSession() as s:

            async def send(body: dict[str, object], delay: float) -> None:
                await asyncio.sleep(delay)
                async with s.post(f"{cluster.urls[0]}/v1/completions", json=body) as r:
                    assert r.status == 200
                    await r.read()

            await asyncio.gather(
                *(send(b, d) for b, d in zip(bodies, (0.0, 0.0, 0.003, 0.006), strict=True))
            )
        config = server.config.engine

    assert len(seen) == 4
    replay = VirtualServer(Engine(config), record_tokens=True)
    # Submission order = the server's request sequence number (ties in arrival stay ordered).
    for r in sorted(seen.values(), key=lambda r: int(r.request_id.rsplit("-", 1)[1])):
        replay.submit(
            SimRequest(
                r.request_id,
                prompt_token_ids=list(r.prompt_token_ids or ()),
                max_tokens=r.max_tokens,
                lora=r.lora,
                arrival_time=r.arrival_time,
                output_token_ids=r.output_token_ids,
            )
        )
    replay.run_until_idle()
    assert replay.token_times == times
    assert any(r.num_cached_tokens for r in seen.values())  # the shared prefix was reused
