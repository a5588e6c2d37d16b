"""The autoscaling loop: traces, signals, start-up delay, draining, replica-hour accounting."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from kvroute_bench.autoscale import (
    AutoscaleResult,
    ScalerConfig,
    TraceSpec,
    register_signal,
    run_autoscaled,
    signal_fn,
    trace_requests,
)
from kvroute_bench.autoscale_report import best_per_signal, markdown
from kvroute_bench.hpa import HpaSpec
from kvroute_bench.sim_replica import replica_config
from kvroute_bench.sweep import make_router
from kvroute_bench.workload import resolve_spec
from kvroute_sim.accelerators import on_accelerator

L4 = on_accelerator(replica_config("h100-llama3-8b"), "l4")


def test_diurnal_and_bursty_rates() -> None:
    d = TraceSpec(shape="diurnal", peak_qps=10, period=100, trough=0.2)
    assert d.rate_at(0) == pytest.approx(2.0)
    assert d.rate_at(50) == pytest.approx(10.0)
    b = TraceSpec(shape="bursty", peak_qps=10, base=0.3, burst_every=100, burst_len=20)
    assert [b.rate_at(t) for t in (50, 105, 125, 210)] == pytest.approx([3, 10, 3, 10])
    with pytest.raises(ValueError, match="unknown trace shape"):
        TraceSpec(shape="sawtooth")


def test_thinning_follows_the_rate() -> None:
    trace = TraceSpec(shape="diurnal", peak_qps=20, duration=400, period=400, trough=0.1)
    reqs = trace_requests(trace, resolve_spec("sharegpt"), seed=1)
    assert reqs == trace_requests(trace, resolve_spec("sharegpt"), seed=1)
    first = sum(1 for r in reqs if r.arrival < 50)
    middle = sum(1 for r in reqs if 175 <= r.arrival < 225)
    assert middle > 3 * first  # ~19 qps vs ~3 qps around the trough
    expected = 20 * 400 * (0.1 + 0.9 * 0.5)  # the integral of the rate
    assert abs(len(reqs) - expected) < 0.1 * expected


def _run(signal: str, target: float, **kw: float) -> tuple[AutoscaleResult, int]:
    trace = TraceSpec(shape="bursty", peak_qps=14, duration=240, base=0.2, burst_every=80,
                      burst_len=60)  # fmt: skip
    reqs = trace_requests(trace, resolve_spec("sharegpt"), seed=0)
    hpa = HpaSpec(
        target=target,
        min_replicas=int(kw.pop("min", 1)),
        max_replicas=int(kw.pop("max", 8)),
        scale_down_window=kw.pop("down", 30.0),
    )
    scaler = ScalerConfig(
        signal, hpa, initial_replicas=1, startup_min=20.0, startup_max=20.0, drain=120.0
    )
    return run_autoscaled(reqs, L4, make_router("least-requests", 0), scaler), len(reqs)


def test_a_fixed_pool_bills_replicas_times_the_run() -> None:
    r, n = _run("queue", 1e9, min=1, max=1)
    assert r.arrived == n
    assert r.peak_replicas == 1
    end = r.series[-1][0]
    assert r.replica_hours >= end / 3600


def test_the_pool_grows_under_a_burst_and_new_replicas_wait_for_start_up() -> None:
    r, _ = _run("running", 8.0)
    series = r.series
    assert r.peak_replicas > 1
    # The first time desired exceeds 1, ready stays 1 for the 20 s start-up (syncs every 15 s).
    t_up = next(t for t, d, _rd, _v in series if d > 1)
    assert all(rd == 1 for t, _d, rd, _v in series if t < t_up + 20.0)
    assert any(rd > 1 for t, _d, rd, _v in series if t >= t_up + 20.0)
    # Shrinking drains: every request was served.
    assert not math.isnan(r.ttft_p90)
    assert series[-1][1] < r.peak_replicas


def test_more_capacity_means_better_attainment_and_more_replica_hours() -> None:
    small, _ = _run("running", 1e9, min=1, max=1)
    big, _ = _run("running", 1e9, min=4, max=4)
    assert big.slo_attainment > small.slo_attainment
    assert big.replica_hours > 3 * small.replica_hours
    best = best_per_signal([small, big], goal=0.0)
    assert best["running"] is small  # both meet a 0 goal: the cheaper one
    assert "**best**" in markdown([small, big], 0.99, 1.0)


def test_pending_signals_say_what_they_need() -> None:
    with pytest.raises(ValueError, match="runs no flow control"):
        signal_fn("flow-control-wait")
    with pytest.raises(ValueError, match="unknown signal"):
        signal_fn("cpu")
    with pytest.raises(ValueError, match="already registered"):
        register_signal("queue", lambda s: 0.0)


def test_the_command_writes_json_markdown_and_plot(tmp_path: Path) -> None:
    import argparse
    import json

    from kvroute_bench.cli import configure, run

    parser = argparse.ArgumentParser()
    configure(parser)
    out = tmp_path / "as"
    args = parser.parse_args(
        ["autoscale", "--trace-shape", "bursty", "--peak-qps", "10", "--duration", "120",
         "--startup", "20,30", "--scaler", "kv=0.5", "--scaler", "gpu-busy=0.8",
         "--out", str(out)]
    )  # fmt: skip
    assert run(args) == 0
    doc = json.loads(out.with_suffix(".json").read_text())
    assert [r["label"] for r in doc["results"]] == ["kv@0.5", "gpu-busy@0.8"]
    assert doc["meta"]["trace"]["shape"] == "bursty"
    assert "| kv@0.5 |" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").stat().st_size > 10_000
    with pytest.raises(SystemExit, match="runs no flow control"):
        run(parser.parse_args(["autoscale", "--scaler", "flow-control-wait=1"]))
