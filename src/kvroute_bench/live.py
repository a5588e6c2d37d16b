"""Live mode: an open-loop streaming load generator against OpenAI-compatible URLs (loopback).

Open loop means every request is sent at its scheduled arrival time whether or not earlier ones
have finished, as inference-perf and vLLM ``bench serve`` do; a closed loop would hide queueing.
Each request is a streaming ``POST /v1/completions`` with ``stream_options.include_usage``;
TTFT is taken at the first chunk that carries text, and the output token count is the server's
``usage.completion_tokens`` (re-tokenising streamed text on the client is wrong whenever the
client's tokenizer differs from the server's). Bounded twice: no more than ``max_requests``
requests and no sends after ``duration`` seconds; requests still running ``timeout`` seconds
after their send are cancelled and counted as failed.

Only loopback targets are accepted: this tool generates load, and on this project's machines it
is meant for local gateways and simulated servers only.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from kvroute_bench.metrics import EngineCounters, RequestRecord, Slo, StageMetrics, summarize
from kvroute_bench.workload import BenchRequest, generate, load_trace, resolve_spec


def check_loopback(url: str) -> None:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise ValueError(f"{url}: live mode only targets loopback addresses (127.0.0.0/8, ::1)")


@dataclass(frozen=True, slots=True)
class LiveOptions:
    urls: tuple[str, ...]  # more than one: client-side round-robin over them
    model: str = "meta-llama/Llama-3.1-8B-Instruct"
    timeout: float = 60.0
    duration: float = 30.0
    max_requests: int = 200


async def _one(
    session: aiohttp.ClientSession,
    url: str,
    model: str,
    req: BenchRequest,
    rec: RequestRecord,
    t0: float,
) -> None:
    body: dict[str, Any] = {
        "model": req.adapter or model,
        "prompt": req.text(),
        "max_tokens": req.output_len,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    rec.sent = time.perf_counter() - t0
    chunks = 0
    try:
        async with session.post(f"{url}/v1/completions", json=body) as resp:
            if resp.status in (429, 503):
                rec.shed = True
                await resp.read()
                return
            if resp.status != 200:
                rec.failed = True
                await resp.read()
                return
            async for raw in resp.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                event = json.loads(data)
                choices = event.get("choices") or []
                if choices and choices[0].get("text"):
                    chunks += 1
                    if rec.first_token is None:
                        rec.first_token = time.perf_counter() - t0
                usage = event.get("usage")
                if usage:
                    rec.output_tokens = int(usage.get("completion_tokens", 0))
                    rec.cached_tokens = int(
                        (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0) or 0
                    )
        rec.finish = time.perf_counter() - t0
        if rec.output_tokens == 0:
            rec.output_tokens = chunks
    except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError, ValueError):
        # TimeoutError: aiohttp raises asyncio.TimeoutError (builtin on 3.11+) when the
        # per-request timeout expires mid-stream; the request is a failure, never a crash.
        rec.failed = True


async def run_live(
    requests: Sequence[BenchRequest], options: LiveOptions
) -> tuple[list[RequestRecord], float]:
    """Send ``requests`` open-loop at their arrival times; returns the records and the end."""
    for url in options.urls:
        check_loopback(url)
    todo = [r for r in requests if r.arrival < options.duration][: options.max_requests]
    records = [RequestRecord(request=r, sent=r.arrival) for r in todo]
    timeout = aiohttp.ClientTimeout(total=options.timeout)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        t0 = time.perf_counter()
        tasks: list[asyncio.Task[None]] = []
        for i, (req, rec) in enumerate(zip(todo, records, strict=True)):
            delay = req.arrival - (time.perf_counter() - t0)
            if delay > 0:
                await asyncio.sleep(delay)
            url = options.urls[i % len(options.urls)]
            tasks.append(asyncio.create_task(_one(session, url, options.model, req, rec, t0)))
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=options.timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for rec in records:
                if rec.finish is None and not rec.shed:
                    rec.failed = True
        end = time.perf_counter() - t0
    return records, end


def summarize_live(
    records: Sequence[RequestRecord], *, qps: float, end: float, window: float, slo: Slo
) -> StageMetrics:
    """Live summary over ``[0, window)``; engine counters are not scraped in live mode."""
    tokens = sum(r.output_tokens for r in records if r.finish is not None and r.finish < window)
    return summarize(
        records,
        policy="live",
        offered_qps=qps,
        window=(0.0, window),
        end=end,
        output_tokens_in_window=tokens,
        counters=EngineCounters(),
        slo=slo,
    )


def run_live_command(args: argparse.Namespace) -> int:
    spec = resolve_spec(args.workload, dict(kv.split("=", 1) for kv in (args.param or [])))
    if args.trace:
        requests = load_trace(args.trace)
    else:
        requests = generate(spec, rate=args.qps, duration=args.duration, seed=args.seed)
    options = LiveOptions(
        urls=(args.url.rstrip("/"), *(u.rstrip("/") for u in args.round_robin)),
        model=args.model,
        timeout=args.timeout,
        duration=args.duration,
        max_requests=args.max_requests,
    )
    records, end = asyncio.run(run_live(requests, options))
    m = summarize_live(
        records,
        qps=args.qps,
        end=end,
        window=max(end, 1e-3),
        slo=Slo(ttft=args.slo_ttft, tpot=args.slo_tpot),
    )
    out = {"meta": {"url": args.url, "workload": args.workload, "qps": args.qps}, **m.to_json()}
    text = json.dumps(out, indent=1)
    if args.out:
        args.out.with_suffix(".json").write_text(text + "\n")
    print(text)
    return 0 if m.failed == 0 else 1
