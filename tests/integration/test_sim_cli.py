"""``kvroute sim`` as a process, and KV events from a live server over ZMQ."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time

import aiohttp
import msgpack
import pytest
import zmq
import zmq.asyncio

from kvroute_sim.cluster import SimCluster
from kvroute_sim.tokenizer import block_hashes, tokenize

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_cli_starts_n_servers_prints_ready_lines_and_exits_on_sigterm() -> None:
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kvroute.cli",
            "sim",
            "--servers",
            "2",
            "--base-port",
            "0",
            "--profile",
            "tiny",
            "--lora",
            "ad-1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as proc:
        try:
            assert proc.stdout is not None
            lines = [proc.stdout.readline() for _ in range(2)]
            pat = re.compile(
                rf"^sim-(\d) ready (http://127\.0\.0\.1:\d+) model={MODEL} profile=tiny$"
            )
            matches = [pat.match(line.strip()) for line in lines]
            assert all(matches), lines
            urls = [m.group(2) for m in matches if m]
            assert len(set(urls)) == 2
            assert asyncio.run(_probe(urls)) == ["sim-0", "sim-1"]
            proc.send_signal(signal.SIGTERM)
            _out, err = proc.communicate(timeout=10)
            assert proc.returncode == 0, err
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


async def _probe(urls: list[str]) -> list[str]:
    names = []
    async with aiohttp.ClientSession() as s:
        for url in urls:
            async with s.post(f"{url}/v1/completions", json={"model": "ad-1", "prompt": "hi"}) as r:
                assert r.status == 200
                names.append(r.headers["x-sim-server"])
    return names


async def test_kv_events_published_for_served_prompts() -> None:
    port = _free_port()
    ctx = zmq.asyncio.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(f"tcp://127.0.0.1:{port}")
    prompt = " ".join(f"t{i}" for i in range(40))
    expected = block_hashes(tokenize(prompt), 16)
    try:
        async with (
            SimCluster(
                n=1, profile="tiny", kv_events_base_port=port, engine_overrides={"kv_events": True}
            ) as c,  # fmt: skip
            aiohttp.ClientSession() as s,
        ):
            stored: list[int] = []
            topic = b""
            deadline = time.monotonic() + 10
            # PUB/SUB joins asynchronously: send requests until the events arrive.
            while not set(expected) <= set(stored) and time.monotonic() < deadline:
                async with s.post(
                    f"{c.urls[0]}/v1/completions",
                    json={"model": MODEL, "prompt": prompt, "max_tokens": 1},
                ) as r:
                    assert r.status == 200
                while await sub.poll(100):
                    topic, seq, payload = await sub.recv_multipart()
                    assert len(seq) == 8
                    _ts, events = msgpack.unpackb(payload)
                    for ev in events:
                        if ev[0] == "BlockStored":
                            stored.extend(ev[1])
                # Reset so the next request stores (and announces) the blocks again.
                async with s.post(f"{c.urls[0]}/reset_prefix_cache") as r:
                    assert r.status == 200
            assert set(expected) <= set(stored)
            assert topic == f"kv@127.0.0.1@{MODEL}".encode()
    finally:
        sub.close(linger=0)
        ctx.term()
