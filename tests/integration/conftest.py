"""Shared integration fixtures: small OpenAI-style model servers, the EPP, Envoy, on loopback.

:class:`MiniModelServer` is a real aiohttp server speaking just enough of the OpenAI API
(completions and chat, streaming or not, usage) and of vLLM's ``/metrics`` (queue, running,
KV use, LoRA adapters) for the gateway's end-to-end checks. It reports its own in-flight
requests as ``num_requests_running`` and lets a test force saturation or make it reset
connections (a "dead" endpoint that still answers scrapes). Responses carry ``x-sim-server``,
the same header the project's simulator sends, so tests can switch between them. A request's
``max_tokens`` (when set) is the number of tokens generated, each ``token_delay_s`` apart.

Other test modules may import :class:`MiniModelServer` and :func:`mini_pool`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class MiniModelServer:
    """One fake vLLM-like server; ``url`` is valid after :meth:`start`."""

    name: str
    adapters: Sequence[str] = ()
    token_delay_s: float = 0.0
    tokens: int = 4
    saturated: bool = False
    reset_requests: bool = False
    served: int = 0
    inflight: int = 0
    seen_models: list[str] = field(default_factory=list)
    # Finding 5 (issue 20) fault knobs: answer every inference request 500, or never answer.
    error_status: int | None = None
    hang: bool = False
    seen_headers: list[dict[str, str]] = field(default_factory=list)
    other_paths: list[str] = field(default_factory=list)  # admin-like paths that reached us
    _release: asyncio.Event = field(default_factory=asyncio.Event)  # ends hung requests
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/v1/completions", self._complete)
        app.router.add_post("/v1/chat/completions", self._complete)
        app.router.add_get("/v1/models", self._models)
        app.router.add_route("*", "/{tail:.*}", self._other)  # e.g. /v1/load_lora_adapter
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        server: Any = site._server
        self.port = int(server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, _req: web.Request) -> web.Response:
        waiting = 50 if self.saturated else 0
        kv = 0.99 if self.saturated else min(0.9, 0.05 * self.inflight)
        running_adapters = ",".join(self.adapters)
        text = (
            f"vllm:num_requests_waiting {waiting}\n"
            f"vllm:num_requests_running {self.inflight}\n"
            f"vllm:kv_cache_usage_perc {kv}\n"
            f'vllm:lora_requests_info{{max_lora="4",running_lora_adapters="{running_adapters}",'
            f'waiting_lora_adapters=""}} {time.time()}\n'
        )
        return web.Response(text=text)

    async def _models(self, _req: web.Request) -> web.Response:
        models = {"data": [{"id": a} for a in ("base", *self.adapters)]}
        return web.json_response(models, headers={"x-sim-server": self.name})

    async def _other(self, req: web.Request) -> web.Response:
        self.other_paths.append(req.path)
        return web.json_response({"ok": True}, headers={"x-sim-server": self.name})

    async def _complete(self, req: web.Request) -> web.StreamResponse:
        self.seen_headers.append(dict(req.headers))
        if self.hang:
            await self._release.wait()
            raise web.HTTPServiceUnavailable
        if self.error_status is not None:
            await req.read()
            self.served += 1
            return web.json_response(
                {"error": {"message": "injected"}},
                status=self.error_status,
                headers={"x-sim-server": self.name},
            )
        if self.reset_requests:
            # Close the connection without a byte of response: Envoy's reset-before-request.
            assert req.transport is not None
            req.transport.abort()
            return web.Response(status=500)
        raw = await req.read()
        body = json.loads(raw)
        model = body["model"]
        self.seen_models.append(model)
        self.served += 1
        self.inflight += 1
        chat = req.path.endswith("/chat/completions")
        prompt = json.dumps(body.get("messages")) if chat else str(body.get("prompt", ""))
        digest = hashlib.sha256(prompt.encode()).hexdigest()
        max_tokens = body.get("max_tokens")
        n_tokens = self.tokens if max_tokens is None else int(max_tokens)
        usage = {"prompt_tokens": max(1, len(prompt) // 4), "completion_tokens": n_tokens}
        headers = {"x-sim-server": self.name}
        try:
            if body.get("stream"):
                resp = web.StreamResponse(headers={**headers, "content-type": "text/event-stream"})
                await resp.prepare(req)
                for i in range(n_tokens):
                    await asyncio.sleep(self.token_delay_s)
                    chunk = _chunk(model, chat, f"t{i} ", None)
                    await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
                if (body.get("stream_options") or {}).get("include_usage"):
                    final = _chunk(model, chat, "", usage)
                    await resp.write(f"data: {json.dumps(final)}\n\n".encode())
                await resp.write(b"data: [DONE]\n\n")
                await resp.write_eof()
                return resp
            await asyncio.sleep(self.token_delay_s * n_tokens)
            doc = _chunk(model, chat, "done", usage, final=True)
            doc["prompt_sha256"] = digest
            doc["prompt_len"] = len(prompt)
            return web.json_response(doc, headers=headers)
        finally:
            self.inflight -= 1


def _chunk(
    model: str, chat: bool, text: str, usage: dict[str, int] | None, final: bool = False
) -> dict[str, Any]:
    if chat:
        obj = "chat.completion" if final else "chat.completion.chunk"
        key = "message" if final else "delta"
        choices = [{"index": 0, key: {"role": "assistant", "content": text}}]
    else:
        obj = "text_completion"
        choices = [{"index": 0, "text": text}]
    doc: dict[str, Any] = {"id": "cmpl-1", "object": obj, "model": model, "choices": choices}
    if usage is not None:
        doc["usage"] = usage
    return doc


@contextlib.asynccontextmanager
async def mini_pool(servers: Sequence[MiniModelServer]) -> AsyncIterator[list[MiniModelServer]]:
    """Start the servers, yield them, stop them."""
    async with contextlib.AsyncExitStack() as stack:
        for s in servers:
            await s.start()
            stack.push_async_callback(s.stop)
        yield list(servers)
