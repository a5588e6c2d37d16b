"""Multimodal requests through a real Envoy in front of the real EPP (issue 14).

The model server is ``MiniModelServer`` (real aiohttp on loopback): its answer carries the
SHA-256 of the messages it received, so a test sees that a 20 MB image reached it intact. The
"never fetched" check points an image URL at a real HTTP server on loopback and counts its hits.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from PIL import Image

from kvroute.gateway.gateway import Gateway
from kvroute.settings import EppSettings
from tests.integration.conftest import MiniModelServer, mini_pool

pytestmark = [pytest.mark.integration]

CONFIG = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- {type: openai-parser, parameters: {maxMediaItemBytes: 1048576}}
- type: prefix-cache-scorer
- type: mm-embeddings-cache-scorer
- type: max-score-picker
requestHandler: {parsers: [{pluginRef: openai-parser}]}
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: prefix-cache-scorer, weight: 1}
  - {pluginRef: mm-embeddings-cache-scorer, weight: 1}
  - {pluginRef: max-score-picker}
flowControl: {enabled: false}
"""


def _settings(servers: list[MiniModelServer], config: str | None = None) -> EppSettings:
    return EppSettings(
        grpc_port=0,
        grpc_health_port=0,
        metrics_port=0,
        bind_host="127.0.0.1",
        endpoints=tuple(("127.0.0.1", s.port) for s in servers),
        secure_serving=False,
        health_checking=True,
        config_text=config,
    )


def _png(size: tuple[int, int] = (64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (5, 6, 7)).save(buf, "PNG")
    return buf.getvalue()


def _chat(*parts: dict[str, Any]) -> dict[str, Any]:
    message = {"role": "user", "content": list(parts)}
    return {"model": "base", "max_tokens": 2, "messages": [message]}


def _image(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


async def test_20mb_data_url_image_reaches_the_server_intact(tmp_path: Path) -> None:
    """Done-when: a chat request with a 20 MB data-URL image succeeds (default limits)."""
    server = MiniModelServer("s")
    payload = _png() + bytes(range(256)) * (20 * 1024 * 1024 // 256)  # ~20 MiB "image"
    url = "data:image/png;base64," + base64.b64encode(payload).decode()
    body = _chat({"type": "text", "text": "describe"}, _image(url))
    async with (
        mini_pool([server]),
        Gateway(settings=_settings([server]), log_dir=tmp_path) as gw,
        httpx.AsyncClient(base_url=gw.url, timeout=120) as c,
    ):
        r = await c.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text[:500]
        sent = hashlib.sha256(json.dumps(body["messages"]).encode()).hexdigest()
        assert r.json()["prompt_sha256"] == sent
        assert server.served == 1


@pytest.mark.parametrize(
    ("part", "status", "needle"),
    [
        (
            _image("data:image/png;base64,iVBO@@@@"),
            400,
            "messages[0].content[1].image_url.url: invalid base64",
        ),
        (
            {"type": "input_audio", "input_audio": {"data": "not base64!", "format": "wav"}},
            400,
            "messages[0].content[1].input_audio.data: invalid base64",
        ),
        ({"type": "hologram"}, 400, "unsupported content part type 'hologram'"),
        (
            _image("data:image/png;base64," + "A" * (2 * 1024 * 1024)),
            413,
            "per-item limit of 1048576 bytes (openai-parser parameter maxMediaItemBytes)",
        ),
    ],
    ids=["invalid-base64-image", "invalid-base64-audio", "unsupported-part", "item-too-large"],
)
async def test_bad_media_parts_are_answered_with_the_part_named(
    tmp_path: Path, part: dict[str, Any], status: int, needle: str
) -> None:
    server = MiniModelServer("s")
    async with (
        mini_pool([server]),
        Gateway(settings=_settings([server], CONFIG), log_dir=tmp_path) as gw,
        httpx.AsyncClient(base_url=gw.url, timeout=60) as c,
    ):
        r = await c.post("/v1/chat/completions", json=_chat({"type": "text", "text": "x"}, part))
        assert r.status_code == status, r.text
        assert needle in r.text
        assert server.served == 0  # nothing reached a model server
        ok = await c.post("/v1/chat/completions", json=_chat(_image(_data(_png()))))
        assert ok.status_code == 200, ok.text  # the EPP lost nothing: the next request passes


def _data(raw: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(raw).decode()


async def test_url_images_are_never_fetched_and_route_by_their_url(tmp_path: Path) -> None:
    hits: list[str] = []

    async def image(req: web.Request) -> web.Response:
        hits.append(req.path)
        return web.Response(body=_png(), content_type="image/png")

    app = web.Application()
    app.router.add_get("/{name}", image)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    servers = [MiniModelServer("a"), MiniModelServer("b"), MiniModelServer("c")]
    try:
        async with (
            mini_pool(servers),
            Gateway(settings=_settings(servers, CONFIG), log_dir=tmp_path) as gw,
            httpx.AsyncClient(base_url=gw.url, timeout=60) as c,
        ):
            picked = []
            for i in range(4):
                body = _chat(
                    {"type": "text", "text": f"question {i} about "},
                    _image(f"http://127.0.0.1:{port}/cat.png"),
                )
                r = await c.post("/v1/chat/completions", json=body)
                assert r.status_code == 200, r.text
                picked.append(r.headers["x-sim-server"])
            assert len(set(picked)) == 1, picked  # same image URL, different text: one server
        assert hits == []  # neither the EPP nor anything else fetched the URL
    finally:
        await runner.cleanup()
