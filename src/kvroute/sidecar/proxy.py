"""The sidecar's aiohttp shell: one listener, the local model server, the prefill legs.

Every request is proxied to ``model_server`` (``http://127.0.0.1:8200`` by default); those
carrying ``x-prefiller-host-port`` first send the prefill leg (:mod:`kvroute.sidecar.core`).
The decode answer is streamed back chunk by chunk with its status and headers. The sidecar's own
counters are served at ``/sidecar/metrics`` (Prometheus text), so the model server's ``/metrics``
passes through untouched for the EPP's scraper.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from kvroute.sidecar.core import (
    FallbackReason,
    MalformedTransferParams,
    Mode,
    Split,
    data_parallel_rank,
    decode_body,
    forward_headers,
    parse_transfer_params,
    plan,
    prefill_body,
)

log = logging.getLogger(__name__)

METRICS_PATH = "/sidecar/metrics"
_RESPONSE_DROP = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})


@dataclass(frozen=True, slots=True)
class SidecarOptions:
    model_server: str = "http://127.0.0.1:8200"
    prefill_timeout_s: float = 60.0
    prefill_max_retries: int = 0
    prefill_scheme: str = "http"
    # Data-parallel ranks on consecutive model-server ports (``--data-parallel-size``): rank r
    # of ``x-data-parallel-host-port`` = its port - ``listen_port``.
    data_parallel_size: int = 1
    listen_port: int = 8000


class SidecarMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "kvroute_sidecar_requests",
            "Requests by how they were served: passthrough, disaggregated, fallback",
            ["mode"],
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "kvroute_sidecar_prefill_fallbacks",
            "Prefill legs that failed, so the decode server prefilled locally, by reason",
            ["reason"],
            registry=self.registry,
        )
        for m in Mode:
            self.requests.labels(m.value)
        for r in FallbackReason:
            self.fallbacks.labels(r.value)

    def value(self, counter: Counter, label: str) -> float:
        name = "requests" if counter is self.requests else "prefill_fallbacks"
        key = "mode" if counter is self.requests else "reason"
        got = self.registry.get_sample_value(f"kvroute_sidecar_{name}_total", {key: label})
        return got or 0.0


class Sidecar:
    def __init__(self, options: SidecarOptions | None = None) -> None:
        self.options = options or SidecarOptions()
        self.metrics = SidecarMetrics()
        self._session: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_get(METRICS_PATH, self._metrics)
        app.router.add_route("*", "/{tail:.*}", self._proxy)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, app: web.Application) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            auto_decompress=False,
        )

    async def _stop(self, app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = dict(request.headers)
        split = plan(request.method, request.path, headers, body)
        upstream_body = body
        if split is None:
            self.metrics.requests.labels(Mode.PASSTHROUGH.value).inc()
        else:
            upstream_body = await self._prefill(split, headers, body)
        return await self._forward(request, forward_headers(headers), upstream_body)

    async def _prefill(self, split: Split, headers: Mapping[str, str], original: bytes) -> bytes:
        """The decode leg's body: with the prefill server's transfer params, or the original."""
        assert self._session is not None
        url = f"{self.options.prefill_scheme}://{split.prefiller}{split.path}"
        leg = prefill_body(split.body)
        reason = FallbackReason.ERROR
        for attempt in range(self.options.prefill_max_retries + 1):
            try:
                async with asyncio.timeout(self.options.prefill_timeout_s):
                    async with self._session.post(
                        url,
                        data=leg,
                        headers={
                            **forward_headers(headers),
                            "Content-Type": "application/json",
                        },
                    ) as resp:
                        payload = await resp.read()
                        if resp.status // 100 != 2:
                            raise aiohttp.ClientResponseError(
                                resp.request_info, (), status=resp.status
                            )
                params = parse_transfer_params(payload)
            except TimeoutError:
                reason = FallbackReason.TIMEOUT
            except MalformedTransferParams as exc:
                reason = FallbackReason.MALFORMED
                log.warning("prefill %s: %s; prefilling locally", split.prefiller, exc)
                break  # a server that answers malformed params will answer them again
            except (aiohttp.ClientError, OSError) as exc:
                reason = FallbackReason.ERROR
                log.warning("prefill %s failed (attempt %d): %s", split.prefiller, attempt + 1, exc)
            else:
                self.metrics.requests.labels(Mode.DISAGGREGATED.value).inc()
                return decode_body(split.body, params)
        self.metrics.fallbacks.labels(reason.value).inc()
        self.metrics.requests.labels(Mode.FALLBACK.value).inc()
        return original

    def _model_server(self, headers: Mapping[str, str]) -> str:
        o = self.options
        base = o.model_server.rstrip("/")
        rank = data_parallel_rank(headers, o.listen_port, o.data_parallel_size)
        if rank == 0:
            return base
        scheme_host, _, port = base.rpartition(":")
        return f"{scheme_host}:{int(port) + rank}"

    async def _forward(
        self, request: web.Request, headers: Mapping[str, str], body: bytes
    ) -> web.StreamResponse:
        assert self._session is not None
        url = self._model_server(request.headers) + request.path_qs
        try:
            upstream = await self._session.request(
                request.method, url, data=body or None, headers=headers
            )
        except (aiohttp.ClientError, OSError) as exc:
            return web.Response(status=502, text=f"model server unreachable: {exc}")
        try:
            out = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for k, v in upstream.headers.items():
                if k.lower() not in _RESPONSE_DROP:
                    out.headers.add(k, v)
            if upstream.content_length is not None:
                out.content_length = upstream.content_length
            await out.prepare(request)
            async for chunk in upstream.content.iter_any():
                await out.write(chunk)
            await out.write_eof()
            return out
        finally:
            upstream.release()
