"""Run the demo: the same workload through kvroute (Envoy + EPP) and through plain round-robin.

Each phase gets freshly started simulated servers (``kvroute sim`` in a child process, so their
engine loops do not share an event loop with the EPP or the load generator), then the load
generator (``kvroute_bench.live``) sends the workload open-loop, streaming, and records TTFT at
the first token. The table compares the two phases per traffic class.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from kvroute.sdk import Criticality
from kvroute_bench.demo.scenario import (
    BASE_MODEL,
    CRITICAL_TTFT_SLO,
    EPP_CONFIG_YAML,
    RESOURCES_YAML,
    SIM_CONFIG_YAML,
    DemoWorkload,
)
from kvroute_bench.live import LiveOptions, run_live
from kvroute_bench.metrics import RequestRecord, percentile
from kvroute_bench.workload import BenchRequest

READY = re.compile(r"ready (http://\S+)")


def _free_base_port(n: int) -> int:
    """A base port with ``n`` consecutive free ports (best effort; the sim reports a clash)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        if base + n >= 65535:
            continue
        ok = True
        for p in range(base, base + n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no run of free loopback ports found")


@contextlib.asynccontextmanager
async def sim_servers(n: int, workdir: Path) -> AsyncIterator[list[str]]:
    """``kvroute sim`` as a child process; yields the server URLs once every one is ready."""
    cfg = workdir / "sim.yaml"
    cfg.write_text(SIM_CONFIG_YAML)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kvroute.cli", "sim",
        "--servers", str(n), "--base-port", str(_free_base_port(n)), "--config", str(cfg),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    urls: list[str] = []
    try:
        assert proc.stdout is not None
        while len(urls) < n:
            line = await asyncio.wait_for(proc.stdout.readline(), timeout=60)
            if not line:
                raise RuntimeError("kvroute sim exited before its servers were ready")
            m = READY.search(line.decode())
            if m:
                urls.append(m.group(1))
        yield urls
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout=10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


@dataclass(frozen=True, slots=True)
class ClassRow:
    sent: int
    ok: int
    shed: int
    failed: int
    ttft_p50: float
    ttft_p90: float
    e2e_p90: float
    slo_met: float  # fraction of sent requests that completed with TTFT within the SLO


@dataclass(frozen=True, slots=True)
class PhaseResult:
    name: str
    by_class: dict[str, ClassRow]
    wall_s: float


def summarize(name: str, records: Sequence[RequestRecord], end: float, wall: float) -> PhaseResult:
    rows: dict[str, ClassRow] = {}
    classes = [("all", None), *((c.value, c) for c in Criticality)]
    for label, crit in classes:
        recs = [r for r in records if crit is None or r.request.criticality is crit]
        if not recs:
            continue
        done = [r for r in recs if r.completed]
        ttfts = [r.ttft(end) for r in done]
        e2es = [r.e2e(end) for r in done]
        slo = [r for r in done if r.ttft(end) <= CRITICAL_TTFT_SLO]
        rows[label] = ClassRow(
            sent=len(recs),
            ok=len(done),
            shed=sum(r.shed for r in recs),
            failed=sum(r.failed for r in recs),
            ttft_p50=percentile(ttfts, 50) if ttfts else float("nan"),
            ttft_p90=percentile(ttfts, 90) if ttfts else float("nan"),
            e2e_p90=percentile(e2es, 90) if e2es else float("nan"),
            slo_met=len(slo) / len(recs),
        )
    return PhaseResult(name, rows, wall)


# Why a class can be slower under kvroute than under round-robin, per class (one line each).
_TRADE_OFF = {
    "Critical": "kvroute keeps chat that shares a system prompt on the servers that cached it and "
    "keeps each adapter where it is loaded, so some servers carry more; round-robin spreads chat "
    "evenly and pays with adapter swaps instead",
    "Standard": "kvroute concentrates each adapter on the servers holding it",
    "Sheddable": "kvroute ranks batch traffic behind critical and standard work",
}


def trade_offs(kvroute: PhaseResult, rr: PhaseResult, margin: float = 0.05) -> list[str]:
    """One line per class whose p90 TTFT under kvroute is more than ``margin`` above
    round-robin's, with what round-robin paid for it (its failures) and why."""
    lines = []
    for cls, row in kvroute.by_class.items():
        other = rr.by_class.get(cls)
        if cls == "all" or other is None or not row.ttft_p90 > other.ttft_p90 * (1 + margin):
            continue
        all_k, all_rr = kvroute.by_class.get("all"), rr.by_class.get("all")
        cost = (
            f"; round-robin failed {all_rr.failed} requests overall, kvroute {all_k.failed}"
            if all_k is not None and all_rr is not None
            else ""
        )
        lines.append(
            f"Trade-off: {cls.lower()} p90 TTFT {row.ttft_p90:.2f} s vs {other.ttft_p90:.2f} s "
            f"round-robin: {_TRADE_OFF.get(cls, 'kvroute weighs load against affinity')}{cost}."
        )
    return lines


async def run_phase(
    name: str, requests: list[BenchRequest], servers: int, workdir: Path, request_timeout: float
) -> PhaseResult:
    started = time.perf_counter()
    duration = max((r.arrival for r in requests), default=0.0) + 1.0
    async with sim_servers(servers, workdir) as urls:
        if name == "rr":
            opts = LiveOptions(urls=tuple(urls), model=BASE_MODEL, timeout=request_timeout,
                               duration=duration, max_requests=len(requests))  # fmt: skip
            records, end = await run_live(requests, opts)
        else:
            from kvroute.embed.gateway import Gateway

            resources = workdir / "resources.yaml"
            resources.write_text(RESOURCES_YAML)
            async with Gateway(
                urls, resources=[resources], config_text=EPP_CONFIG_YAML, log_dir=workdir
            ) as gw:
                opts = LiveOptions(urls=(gw.url,), model=BASE_MODEL, timeout=request_timeout,
                                   duration=duration, max_requests=len(requests))  # fmt: skip
                records, end = await run_live(requests, opts)
    return summarize(name, records, end, time.perf_counter() - started)


def plot(results: Sequence[PhaseResult], path: Path) -> None:
    """TTFT p50/p90 per traffic class, one bar group per class, one colour per router."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = [c for c in results[0].by_class if c != "all"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    width = 0.8 / len(results)
    for ax, (attr, title) in zip(axes, (("ttft_p50", "TTFT p50"), ("ttft_p90", "TTFT p90")),
                                 strict=True):  # fmt: skip
        for i, res in enumerate(results):
            xs = [k + i * width for k in range(len(classes))]
            ys = [getattr(res.by_class[c], attr) for c in classes if c in res.by_class]
            ax.bar(xs[: len(ys)], ys, width, label=res.name)
        ax.set_xticks([k + width * (len(results) - 1) / 2 for k in range(len(classes))])
        ax.set_xticklabels(classes)
        ax.set_ylabel("seconds")
        ax.set_title(title)
        ax.legend()
    fig.suptitle("kvroute demo: the same workload, kvroute vs round-robin")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def default_workdir() -> Path:
    return Path(os.environ.get("KVROUTE_DEMO_DIR", ".kvroute/demo"))


__all__ = ["DemoWorkload", "PhaseResult", "plot", "run_phase", "summarize"]
