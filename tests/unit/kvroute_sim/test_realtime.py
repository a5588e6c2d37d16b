"""The real-time shell: same timings as the virtual-time shell, and it notices falling behind."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from kvroute_sim.config import engine_profile
from kvroute_sim.engine import Engine, SimRequest, StepOutcome
from kvroute_sim.realtime import RealtimeEngine
from kvroute_sim.virtual import VirtualServer


def _requests() -> list[SimRequest]:
    shared = list(range(5000, 5040))
    return [
        SimRequest("a", prompt_token_ids=[*shared, 1, 2], max_tokens=12),
        SimRequest("b", prompt_token_ids=list(range(100, 300)), max_tokens=6),
        SimRequest("c", prompt_token_ids=[*shared, 3, 4, 5], max_tokens=9, lora="l1"),
        SimRequest("d", prompt_token_ids=list(range(900, 920)), max_tokens=4),
    ]


async def test_real_time_and_virtual_time_give_identical_timings() -> None:
    cfg = engine_profile("tiny", api_overhead_s=0.002)
    times_rt: dict[str, list[float]] = {}

    def record(out: StepOutcome) -> None:
        for r in out.emitted:
            times_rt.setdefault(r.request_id, []).append(out.end)

    shell = RealtimeEngine(Engine(cfg), on_step=record)
    await shell.start()
    reqs = _requests()
    queues = []
    for req, gap in zip(reqs, (0.0, 0.004, 0.0, 0.011), strict=True):
        await asyncio.sleep(gap)
        queues.append(shell.submit(req))
    for q in queues:
        while await q.get() is not None:
            pass
    await shell.stop()
    arrivals = {r.request_id: r.arrival_time for r in reqs}
    ttft_rt = {r.request_id: r.first_token_time for r in reqs}

    replay = _requests()
    for r in replay:
        r.arrival_time = arrivals[r.request_id]
    vs = VirtualServer(Engine(cfg), record_tokens=True)
    for r in replay:
        vs.submit(r)
    vs.run_until_idle()

    assert {r.request_id: r.first_token_time for r in replay} == ttft_rt
    assert vs.token_times == times_rt
    assert all(len(times_rt[r.request_id]) == r.max_tokens for r in reqs)


def _starve_the_loop(seconds: float) -> None:
    """Block the event loop, as an overloaded core would (deliberately synchronous)."""
    time.sleep(seconds)


async def test_the_shell_reports_falling_behind(caplog: pytest.LogCaptureFixture) -> None:
    shell = RealtimeEngine(Engine(engine_profile("tiny")), name="sim-x", lag_warn_s=0.005)
    await shell.start()
    q = shell.submit(SimRequest("a", prompt_token_ids=list(range(10)), max_tokens=40))
    await q.get()
    with caplog.at_level(logging.WARNING, logger="kvroute_sim.realtime"):
        _starve_the_loop(0.05)
        while await q.get() is not None:
            pass
    await shell.stop()
    assert shell.steps_late >= 1
    assert shell.max_lag_s >= 0.04
    assert any("falling behind" in rec.getMessage() for rec in caplog.records)


async def test_abort_releases_the_request() -> None:
    engine = Engine(engine_profile("tiny"))
    shell = RealtimeEngine(engine)
    await shell.start()
    q = shell.submit(SimRequest("a", prompt_token_ids=list(range(10)), max_tokens=400))
    await q.get()
    shell.abort("a")
    await asyncio.sleep(0.01)
    assert not engine.has_work()
    assert engine.kv_usage == 0.0
    await shell.stop()


async def test_a_crashed_engine_loop_ends_waiting_clients(caplog: pytest.LogCaptureFixture) -> None:
    """A deliberately broken engine (``step`` replaced by a raising stub) stands in for a bug."""
    engine = Engine(engine_profile("tiny"))

    def broken(now: float) -> StepOutcome:
        raise RuntimeError(f"boom at {now}")

    engine.step = broken  # type: ignore[method-assign]
    shell = RealtimeEngine(engine, name="sim-crash")
    await shell.start()
    with caplog.at_level(logging.ERROR, logger="kvroute_sim.realtime"):
        q = shell.submit(SimRequest("a", prompt_token_ids=list(range(10)), max_tokens=4))
        assert await asyncio.wait_for(q.get(), timeout=5) is None
    await shell.stop()
    assert any("engine loop crashed" in rec.getMessage() for rec in caplog.records)
