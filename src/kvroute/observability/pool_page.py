"""The live pool page: ``GET /pool`` (HTML+JS), ``/pool/state`` (JSON), ``/pool/events`` (SSE).

Served by the EPP on its metrics port, so whatever guards ``/metrics`` guards these too. Every
route is a GET (read-only: nothing here changes the EPP). The page is one static file with
inline JS, no build step and nothing fetched from elsewhere; it writes every value with
``textContent`` (never ``innerHTML``), so a model name, adapter or header containing markup is
shown as text. While an event stream is open the director backend records each decision's
per-plugin explanation (:class:`~kvroute.observability.decisions.DecisionLog`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Callable, Iterable
from importlib import resources
from typing import Any

from aiohttp import web

from kvroute.datastore.endpoint import Endpoint
from kvroute.observability.decisions import DecisionLog

EVENT_INTERVAL_S = 0.5
_CSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'"


def _num(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) else round(x, 6)


def pool_state(
    pool: str, endpoints: Iterable[Endpoint], log: DecisionLog, now: float | None = None
) -> dict[str, Any]:
    """Plain data for the page (and ``kvroute top``): endpoints, recent decisions, latencies."""
    mono = time.monotonic()
    held = log.blocks_held
    eps = []
    for e in sorted(endpoints, key=lambda e: e.name):
        m = e.metrics
        eps.append(
            {
                "name": e.name,
                "address": f"{e.address}:{e.port}",
                "waiting": m.waiting_queue_size,
                "running": m.running_queue_size,
                "kv_cache_usage": round(m.kv_cache_usage, 4),
                "active_adapters": sorted(m.active_models),
                "waiting_adapters": sorted(m.waiting_models),
                "inflight": e.load.inflight,
                "inflight_tokens": e.load.inflight_tokens,
                "prefix_blocks": None if held is None else held(e.name),
                "scraped_ago_s": None if m.updated_at == 0 else round(mono - m.updated_at, 3),
            }
        )
    completions = [
        {
            "at": round(c.at, 3),
            "model": c.model,
            "status": c.status,
            "ttft_s": _num(c.ttft_s),
            "tpot_s": _num(c.tpot_s),
        }
        for c in log.completions
    ]
    return {
        "pool": pool,
        "now": time.time() if now is None else now,
        "endpoints": eps,
        "decisions": list(log.decisions),
        "completions": completions[-200:],
    }


def add_pool_page(
    app: web.Application,
    pool: Callable[[], str],
    endpoints: Callable[[], Iterable[Endpoint]],
    log: DecisionLog,
    interval_s: float = EVENT_INTERVAL_S,
) -> None:
    """Register the page's GET routes on the metrics server's aiohttp ``app``."""
    closing = asyncio.Event()
    static = resources.files("kvroute.observability") / "static"

    def state() -> dict[str, Any]:
        return pool_state(pool(), endpoints(), log)

    def _static(name: str, ctype: str) -> Callable[[web.Request], Any]:
        body = (static / name).read_bytes()

        async def handler(_request: web.Request) -> web.Response:
            headers = {
                "Content-Type": ctype,
                "Content-Security-Policy": _CSP,
                "X-Content-Type-Options": "nosniff",
                "Cache-Control": "no-store",
            }
            return web.Response(body=body, headers=headers)

        return handler

    async def state_json(_request: web.Request) -> web.Response:
        return web.json_response(state(), headers={"Cache-Control": "no-store"})

    async def events(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Content-Type-Options": "nosniff",
            }
        )
        await resp.prepare(request)
        log.watchers += 1
        try:
            while not closing.is_set():
                data = json.dumps(state(), separators=(",", ":"))
                await resp.write(f"data: {data}\n\n".encode())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(closing.wait(), interval_s)
        except ConnectionResetError:
            pass  # the page was closed
        finally:
            log.watchers -= 1
        return resp

    async def on_shutdown(_app: web.Application) -> None:
        closing.set()  # open event streams end, so the server stops without waiting on them

    app.on_shutdown.append(on_shutdown)
    app.router.add_get("/pool", _static("pool.html", "text/html; charset=utf-8"))
    app.router.add_get("/pool/pool.js", _static("pool.js", "text/javascript; charset=utf-8"))
    app.router.add_get("/pool/pool.css", _static("pool.css", "text/css; charset=utf-8"))
    app.router.add_get("/pool/state", state_json)
    app.router.add_get("/pool/events", events)
