"""Same image, different text: one server (issue 14), against ``kvroute sim`` (vision profile).

``kvroute sim --profile tiny-vision`` runs as a process (three servers with an encoder and its
cache, :mod:`kvroute_sim.vision`); a real Envoy and the EPP with kvroute's default profile sit in
front. The requests carry PNG data-URL images and differ in the text *before* the image, so no
prefix block matches: only the image's content hash (``mm-embeddings-cache-scorer``) can bring
the second request to the first one's server. The server's own encoder-cache counters confirm
the second request found the image encoded there.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import signal
import struct
import sys
import zlib
from pathlib import Path

import httpx
import pytest

from kvroute.gateway.gateway import Gateway
from kvroute.settings import EppSettings, parse_endpoint_url

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def _png(width: int, height: int, tag: bytes) -> str:
    """A PNG header (the size is all a VLM server's token count needs) plus distinct bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    raw = (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
        + tag * 64
    )
    return "data:image/png;base64," + base64.b64encode(raw).decode()


def _chat(text: str, image: str, system: str) -> dict[str, object]:
    return {
        "model": MODEL,
        "max_tokens": 4,
        "messages": [
            {"role": "system", "content": system},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": text},
                    {"type": "image_url", "image_url": {"url": image}},
                ],
            },
        ],
    }


def _counter(text: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{")
    )


async def test_same_image_lands_on_the_same_sim_server(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kvroute.cli", "sim", "--servers", "3", "--base-port", "0",
        "--profile", "tiny-vision",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        lines = [(await proc.stdout.readline()).decode() for _ in range(3)]
        urls = [m.group(1) for m in (re.search(r"ready (http://\S+)", ln) for ln in lines) if m]
        assert len(urls) == 3, lines
        settings = EppSettings(
            grpc_port=0,
            grpc_health_port=0,
            metrics_port=0,
            bind_host="127.0.0.1",
            endpoints=tuple(parse_endpoint_url(u) for u in urls),
            secure_serving=False,
            health_checking=True,
        )
        async with (
            Gateway(settings=settings, log_dir=tmp_path) as gw,
            httpx.AsyncClient(base_url=gw.url, timeout=60) as c,
        ):
            for i, tag in enumerate((b"cat", b"dog", b"owl")):
                image = _png(448 + 28 * i, 448, tag)
                first = await c.post(
                    "/v1/chat/completions",
                    json=_chat(f"What animal is this {tag.decode()}?", image, "Be brief."),
                )
                assert first.status_code == 200, first.text
                server = first.headers["x-sim-server"]
                second = await c.post(
                    "/v1/chat/completions",
                    json=_chat("Describe the colours.", image, f"You are helper {i}, be kind."),
                )
                assert second.status_code == 200, second.text
                assert second.headers["x-sim-server"] == server, (i, server)
            hits = 0.0
            async with httpx.AsyncClient(timeout=10) as direct:
                for url in urls:
                    text = (await direct.get(f"{url}/metrics")).text
                    hits += _counter(text, "vllm:encoder_cache_hits_total")
            assert hits == 3  # each image's second request found its encoder output cached
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
