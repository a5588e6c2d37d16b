"""One simulated model server: the aiohttp shell around a real-time engine.

Routes (vLLM's): ``POST /v1/completions``, ``POST /v1/chat/completions`` (JSON or SSE),
``POST /v1/messages`` (Anthropic Messages) and ``POST /v1/responses`` (OpenAI Responses; both
in :mod:`kvroute_sim.server.other_apis`),
``GET /v1/models``, ``GET /health``, ``GET /metrics``, ``POST /v1/load_lora_adapter``,
``POST /v1/unload_lora_adapter``, ``POST /reset_prefix_cache``; and the simulator's own
``GET|POST /admin/faults`` (read or change the ``FaultConfig``; ``{"dead": true}`` kills the
listener). Every response carries ``x-sim-server: <name>``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from typing import Any

from aiohttp import web

from kvroute_sim import disagg
from kvroute_sim.config import FaultConfig, ServerConfig
from kvroute_sim.engine import Engine, RequestRejected, SimRequest, StepOutcome
from kvroute_sim.realtime import RealtimeEngine
from kvroute_sim.server.kvevents import KVEventPublisher
from kvroute_sim.server.metrics import ServerMetrics, render
from kvroute_sim.server.openai_api import (
    DONE,
    ApiError,
    ApiKind,
    ParsedRequest,
    ResponseBuilder,
    parse_generation,
    usage,
)
from kvroute_sim.server.other_apis import OtherApi, OtherResponseBuilder, to_chat_body
from kvroute_sim.text import text_tokenizer

log = logging.getLogger(__name__)
SERVER_HEADER = "x-sim-server"


def _error(err: ApiError) -> web.Response:
    return web.json_response(err.body(), status=err.status)


class SimServer:
    """A simulated vLLM server on one loopback port (``start``/``stop``, ``url``)."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        name: str = "sim-0",
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int = 0,
    ) -> None:
        self.config = config
        self.name = name
        self.host = host
        self.port = port
        self.faults = config.faults.model_copy()
        self.adapters: dict[str, str] = {lora: lora for lora in config.loras}
        self._rng = random.Random(seed)
        self._seq = 0
        self.rendered = 0  # answers of the render endpoints
        self.metrics = ServerMetrics()
        self.text = text_tokenizer(config.tokenizer)
        self.engine = Engine(config.engine)
        self.shell = RealtimeEngine(self.engine, name=name, on_step=self._on_step)
        self._kv_pub: KVEventPublisher | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._tasks: set[asyncio.Future[None]] = set()
        self._dying = asyncio.Event()
        self._tracer: Any = None  # kvroute_sim.server.tracing.SimTracer when tracing is on
        self.transfers = disagg.TransferMetrics(config.role)
        self._link = disagg.link(config.kv_link)
        self._next_block = 0

    # --- lifecycle ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def kv_events_endpoint(self) -> str | None:
        return self._kv_pub.endpoint if self._kv_pub is not None else None

    def build_app(self) -> web.Application:
        app = web.Application()
        if self.config.tracing_endpoint:
            if self._tracer is None:
                from kvroute_sim.server.tracing import SimTracer

                self._tracer = SimTracer(self.config.tracing_endpoint, self.name)
            app.middlewares.append(self._tracer.middleware())
        app.on_response_prepare.append(self._tag_response)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_post("/v1/responses", self._responses)
        app.router.add_post("/v1/completions/render", self._render)
        app.router.add_post("/v1/chat/completions/render", self._render)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/v1/load_lora_adapter", self._load_lora)
        app.router.add_post("/v1/unload_lora_adapter", self._unload_lora)
        app.router.add_post("/reset_prefix_cache", self._reset_prefix_cache)
        app.router.add_get("/admin/faults", self._get_faults)
        app.router.add_post("/admin/faults", self._set_faults)
        return app

    async def start(self) -> None:
        """Start the engine loop and listen (a ``dead`` fault config means: never listen)."""
        if self.config.kv_events_endpoint and self._kv_pub is None:
            topic = self.config.kv_events_topic.format(model=self.config.model)
            self._kv_pub = KVEventPublisher(self.config.kv_events_endpoint, topic)
        await self.shell.start()
        if self.faults.dead:
            return
        await self._listen()

    async def _listen(self) -> None:
        # Handlers are cancelled when their client disconnects (the engine request is then
        # aborted), and shutdown does not wait for hung handlers.
        self._runner = web.AppRunner(
            self.build_app(),
            handle_signals=False,
            access_log=None,
            shutdown_timeout=0.2,
            handler_cancellation=True,
        )
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await self._site.start()
        server = self._site._server
        if self.port == 0 and server is not None:
            sockets = getattr(server, "sockets", None) or []
            self.port = int(sockets[0].getsockname()[1])

    async def kill(self) -> None:
        """Die: close the listener and every open connection (the engine state is kept)."""
        self.faults.dead = True
        self._dying.set()
        if self._runner is not None:
            runner, self._runner, self._site = self._runner, None, None
            await runner.cleanup()

    async def revive(self) -> None:
        """Listen again on the same port after ``kill``."""
        self.faults.dead = False
        self._dying = asyncio.Event()
        if self._runner is None:
            await self._listen()

    def _kill_later(self) -> None:
        task = asyncio.ensure_future(self.kill())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        await self.kill()
        await self.shell.stop()
        if self._kv_pub is not None:
            self._kv_pub.close()
            self._kv_pub = None
        if self._tracer is not None:
            tracer, self._tracer = self._tracer, None
            await asyncio.to_thread(tracer.shutdown)  # flushes the spans still queued

    # --- engine hook --------------------------------------------------------------------------

    def _on_step(self, out: StepOutcome) -> None:
        self.metrics.on_step(out)
        if self._kv_pub is not None and out.kv_events:
            self._kv_pub.publish(time.time(), out.kv_events)

    async def _tag_response(self, request: web.Request, response: web.StreamResponse) -> None:
        del request
        response.headers[SERVER_HEADER] = self.name

    # --- generation ---------------------------------------------------------------------------

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "completion")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "chat")

    def _served(self) -> frozenset[str]:
        return frozenset((self.config.model, *self.adapters))

    def _parse(self, kind: ApiKind, body: object) -> ParsedRequest:
        """A generation request validated against this server's models and limits."""
        return parse_generation(
            kind,
            body,
            served=self._served(),
            max_model_len=self.config.engine.max_model_len,
            default_chat_max_tokens=self.config.default_chat_max_tokens,
            encode=self.text.encode,
            vision=self.config.engine.encoder_s_per_token > 0,
        )

    async def _generate(self, request: web.Request, kind: ApiKind) -> web.StreamResponse:
        faults = self.faults
        if faults.hang:
            await self._dying.wait()  # until the client gives up (cancelled) or the server dies
            raise web.HTTPServiceUnavailable()
        if faults.error_rate and self._rng.random() < faults.error_rate:
            return _error(ApiError(500, "Simulated internal server error (fault injection)."))
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(ApiError(400, "The request body is not valid JSON."))
        try:
            parsed = self._parse(kind, body)
        except ApiError as err:
            return _error(err)
        self._seq += 1
        rid = f"{self.name}-{self._seq}"
        out_ids, out_texts = self.text.output_tokens(self._seq, parsed.max_tokens)
        req = SimRequest(
            rid,
            prompt_token_ids=parsed.prompt_token_ids,
            max_tokens=parsed.max_tokens,
            lora=None if parsed.model == self.config.model else parsed.model,
            output_token_ids=out_ids,
            media=parsed.media,
        )
        producer = self._pd_intake(body, req)
        try:
            queue = self.shell.submit(req)
        except RequestRejected as exc:
            return _error(ApiError(400, str(exc)))
        builder = ResponseBuilder(kind, rid, parsed.model)
        try:
            if parsed.stream:
                return await self._stream(request, req, queue, builder, out_texts, parsed)
            while await queue.get() is not None:
                pass
            text = "".join(out_texts[: req.num_output_tokens])
            body_out = builder.full(
                text, usage(req.num_prompt_tokens, req.num_output_tokens, req.num_cached_tokens)
            )
            if producer:
                body_out["kv_transfer_params"] = self._pd_handout(req)
            return web.json_response(body_out)
        finally:
            if not req.finished:
                self.shell.abort(rid)

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        return await self._other(request, "messages")

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        return await self._other(request, "responses")

    async def _other(self, request: web.Request, api: OtherApi) -> web.StreamResponse:
        """Messages / Responses: validated as the equivalent chat request, answered in kind."""
        try:
            chat = to_chat_body(api, await request.json())
            parsed = self._parse("chat", chat)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(ApiError(400, "The request body is not valid JSON."))
        except ApiError as err:
            return _error(err)
        self._seq += 1
        rid = f"{self.name}-{self._seq}"
        out_ids, out_texts = self.text.output_tokens(self._seq, parsed.max_tokens)
        req = SimRequest(
            rid,
            prompt_token_ids=parsed.prompt_token_ids,
            max_tokens=parsed.max_tokens,
            lora=None if parsed.model == self.config.model else parsed.model,
            output_token_ids=out_ids,
            media=parsed.media,
        )
        try:
            queue = self.shell.submit(req)
        except RequestRejected as exc:
            return _error(ApiError(400, str(exc)))
        builder = OtherResponseBuilder(api, rid, parsed.model)
        try:
            if not parsed.stream:
                while await queue.get() is not None:
                    pass
                text = "".join(out_texts[: req.num_output_tokens])
                n_in, n_out = req.num_prompt_tokens, req.num_output_tokens
                return web.json_response(builder.full(text, n_in, n_out, req.num_cached_tokens))
            resp = web.StreamResponse(
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
            )
            await resp.prepare(request)
            await resp.write(builder.start(req.num_prompt_tokens, req.num_cached_tokens))
            while (idx := await queue.get()) is not None:
                await resp.write(builder.delta(out_texts[idx]))
            text = "".join(out_texts[: req.num_output_tokens])
            await resp.write(
                builder.end(
                    text, req.num_prompt_tokens, req.num_output_tokens, req.num_cached_tokens
                )
            )
            await resp.write_eof()
            return resp
        finally:
            if not req.finished:
                self.shell.abort(rid)

    def _pd_intake(self, body: Any, req: SimRequest) -> bool:
        """Apply ``kv_transfer_params`` to ``req``; True when this server must hand KV out."""
        role = self.config.role
        if role != "decode" and disagg.remote_decode_requested(body):
            self.transfers.phases["prefill-only"] += 1
            return True
        if role != "prefill" and isinstance(body, dict) and "kv_transfer_params" in body:
            params = disagg.remote_prefill_params(body)
            if params is None:
                if isinstance(body["kv_transfer_params"], dict) and body["kv_transfer_params"].get(
                    "do_remote_prefill"
                ):
                    self.transfers.rejected_params += 1
            else:
                n_bytes = (len(req.prompt_token_ids or ())) * self.config.kv_shape.bytes_per_token
                req.remote_kv = True
                req.transfer_s = self._link.transfer_seconds(n_bytes)
                self.transfers.received += 1
                self.transfers.received_bytes += n_bytes
                self.transfers.transfer_seconds += req.transfer_s
                self.transfers.phases["remote-kv-decode"] += 1
                return False
        self.transfers.phases["whole"] += 1
        return False

    def _pd_handout(self, req: SimRequest) -> dict[str, Any]:
        self.transfers.sent += 1
        blocks = -(-req.num_prompt_tokens // self.config.engine.block_size)
        first = self._next_block
        self._next_block += blocks
        return disagg.producer_params(f"{self.name}-engine", first, blocks, self.host, self.port)

    async def _stream(
        self,
        request: web.Request,
        req: SimRequest,
        queue: asyncio.Queue[int | None],
        builder: ResponseBuilder,
        texts: list[str],
        parsed: Any,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        close_after = self.faults.close_mid_stream_after
        sent = 0
        if builder.kind == "chat":
            await resp.write(builder.chunk("", first=True))
            sent += 1
        last = req.max_tokens - 1
        while True:
            if close_after is not None and sent >= close_after:
                if request.transport is not None:
                    request.transport.close()
                return resp
            idx = await queue.get()
            if idx is None:
                break
            cont = (
                usage(req.num_prompt_tokens, idx + 1, req.num_cached_tokens)
                if parsed.continuous_usage
                else None
            )
            await resp.write(builder.chunk(texts[idx], finish=idx == last, usage_body=cont))
            sent += 1
        if parsed.include_usage:
            final = usage(req.num_prompt_tokens, req.num_output_tokens, req.num_cached_tokens)
            await resp.write(builder.chunk(None, usage_body=final))
        await resp.write(DONE)
        await resp.write_eof()
        return resp

    # --- other routes -------------------------------------------------------------------------

    async def _render(self, request: web.Request) -> web.Response:
        """vLLM's render endpoints (``vllm launch render``): the prompt's token ids, no
        generation. Completions answer a list (one entry per prompt), chat one object."""
        chat = request.path.startswith("/v1/chat/")
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(ApiError(400, "The request body is not valid JSON."))
        try:
            parsed = self._parse("chat" if chat else "completion", body)
        except ApiError as err:
            return _error(err)
        self.rendered += 1
        answer = {"token_ids": parsed.prompt_token_ids}
        return web.json_response(answer if chat else [answer])

    async def _models(self, request: web.Request) -> web.Response:
        del request
        created = int(time.time())
        base = self.config.model
        data: list[dict[str, Any]] = [
            {
                "id": base,
                "object": "model",
                "created": created,
                "owned_by": "vllm",
                "root": base,
                "parent": None,
                "max_model_len": self.config.engine.max_model_len,
            }
        ]
        for name, path in self.adapters.items():
            data.append(
                {
                    "id": name,
                    "object": "model",
                    "created": created,
                    "owned_by": "vllm",
                    "root": path,
                    "parent": base,
                    "max_model_len": None,
                }
            )
        return web.json_response({"object": "list", "data": data})

    async def _health(self, request: web.Request) -> web.Response:
        del request
        return web.Response(status=200)

    async def _metrics(self, request: web.Request) -> web.Response:
        del request
        if self.faults.metrics_delay_s:
            await asyncio.sleep(self.faults.metrics_delay_s)
        if self.faults.metrics_garbage:
            return web.Response(text="<html>{{not prometheus}} \x00\x01 vllm:num_requests_running{")
        text = render(
            self.engine.stats(),
            self.metrics,
            model=self.config.model,
            flavour=self.config.metrics_flavour,
            timestamp=time.time(),
            lag_max_s=self.shell.max_lag_s,
            lag_mean_s=self.shell.mean_lag_s,
            steps_late=self.shell.steps_late,
        )
        text += self.transfers.render(self.config.model)
        return web.Response(text=text, content_type="text/plain", charset="utf-8")

    async def _json_body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, "The request body is not valid JSON.") from exc
        if not isinstance(body, dict):
            raise ApiError(400, "The request body must be a JSON object.")
        return body

    async def _load_lora(self, request: web.Request) -> web.Response:
        try:
            body = await self._json_body(request)
            name = body.get("lora_name")
            path = body.get("lora_path")
            if not isinstance(name, str) or not isinstance(path, str) or not name or not path:
                raise ApiError(400, "Both 'lora_name' and 'lora_path' must be provided.")
            if name in self.adapters:
                raise ApiError(400, f"The lora adapter '{name}' has already been loaded.")
        except ApiError as err:
            return _error(err)
        cost = self.engine.load_adapter(name)
        if cost:
            await asyncio.sleep(cost)
        self.adapters[name] = path
        return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")

    async def _unload_lora(self, request: web.Request) -> web.Response:
        try:
            body = await self._json_body(request)
            name = body.get("lora_name")
            if not isinstance(name, str) or not name:
                raise ApiError(400, "'lora_name' must be provided.")
            if name not in self.adapters:
                raise ApiError(404, f"The lora adapter '{name}' cannot be found.")
        except ApiError as err:
            return _error(err)
        del self.adapters[name]
        self.engine.unload_adapter(name)
        return web.Response(text=f"Success: LoRA adapter '{name}' removed successfully.")

    async def _reset_prefix_cache(self, request: web.Request) -> web.Response:
        del request
        ok = self.engine.reset_prefix_cache()
        return web.Response(status=200 if ok else 409)

    async def _get_faults(self, request: web.Request) -> web.Response:
        del request
        return web.json_response(self.faults.model_dump())

    async def _set_faults(self, request: web.Request) -> web.Response:
        try:
            body = await self._json_body(request)
            merged = FaultConfig.model_validate({**self.faults.model_dump(), **body})
        except ApiError as err:
            return _error(err)
        except ValueError as exc:
            return _error(ApiError(400, f"Invalid faults: {exc}"))
        self.faults = merged
        if merged.dead:
            # Answer first, then die (the response must leave before the listener closes).
            asyncio.get_running_loop().call_later(0.05, self._kill_later)
        return web.json_response(merged.model_dump())
