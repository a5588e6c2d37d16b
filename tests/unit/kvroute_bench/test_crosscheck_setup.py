"""The cross-check's shared setup (per-replica engines, adapters) and the predictor probe."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

import pytest

from kvroute.embed.latency import LatencyPredictor
from kvroute_bench.crosscheck import _engine_overrides, make_setup
from kvroute_bench.epp_router import EppRouter
from kvroute_bench.predictor_error import PredictorProbe, latency_scorer_config
from kvroute_bench.sim_replica import replica_config
from kvroute_bench.sweep import SweepSpec
from kvroute_bench.workload import WorkloadSpec, generate, resolve_spec
from kvroute_sim.accelerators import on_accelerator


def test_setup_engines_match_the_virtual_sweep_per_replica() -> None:
    pool = ("h100", "h200", "a100", "l4")
    setup = make_setup("slow", 4, engine_overrides={"max_loras": 3}, accelerators=pool)
    engine = replica_config("slow", {"max_loras": 3})
    spec = SweepSpec(WorkloadSpec(), engine, 4, (), (), 1.0, accelerators=pool)
    assert list(setup.engines) == spec.replica_configs()
    assert setup.engines[3] == on_accelerator(engine, "l4")
    assert setup.engines[0] != setup.engines[3]  # the pool really differs
    assert all(e.max_loras == 3 and e.time_scale == 10.0 for e in setup.engines)
    servers = setup.server_configs()
    assert [s.engine for s in servers] == list(setup.engines)


def test_setup_serves_every_adapter_the_requests_name() -> None:
    wl = resolve_spec("multi-lora", {"num_adapters": "5"})
    requests = generate(wl, rate=20, duration=5, seed=0)
    setup = make_setup("slow", 2, requests=requests)
    named = {r.adapter for r in requests if r.adapter}
    assert named
    assert set(setup.loras) == named
    assert all(s.loras == setup.loras for s in setup.server_configs())


def test_homogeneous_setup_without_accelerators() -> None:
    setup = make_setup("slow", 3)
    assert setup.engines == (replica_config("slow"),) * 3
    assert setup.loras == ()


def test_engine_overrides_parse_json_values() -> None:
    assert _engine_overrides(["max_loras=3", "name=x", "f=0.5"]) == {
        "max_loras": 3,
        "name": "x",
        "f": 0.5,
    }
    with pytest.raises(SystemExit, match="key=value"):
        _engine_overrides(["max_loras"])


def _probe_for(config: str) -> PredictorProbe:
    router = EppRouter("p", config, seed=0)
    probe = PredictorProbe()
    probe.graph = SimpleNamespace(setup=SimpleNamespace(plugins=router.plugins))
    return probe


def test_probe_reports_median_error_before_and_after_the_mark(tmp_path: Path) -> None:
    path = tmp_path / "lat.json"
    path.write_text(latency_scorer_config())
    probe = _probe_for(str(path))
    predictor = probe.predictor()
    assert isinstance(predictor, LatencyPredictor)
    x_ttft, x_tpot = (1.0, 0.1, 0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0)
    for _ in range(5):  # 100% off before the mark
        predictor.observe("a", x_ttft, 0.1, x_tpot, None, predicted_ttft=0.2)
    probe.mark()
    for _ in range(3):  # 10% off after it
        predictor.observe("a", x_ttft, 0.1, x_tpot, None, predicted_ttft=0.11)
    report = probe.report()
    assert report is not None
    assert report["observations"] == 8
    assert report["observations_after_mark"] == 3
    assert report["median_abs_ttft_error_after_mark"] == pytest.approx(0.1)
    assert report["median_abs_ttft_error"] == pytest.approx(1.0)
    assert report["window_full"] is False


def test_probe_without_a_latency_plugin_reports_none() -> None:
    probe = _probe_for("default")
    assert probe.predictor() is None
    assert probe.report() is None
    assert PredictorProbe().report() is None  # no graph yet


def test_unknown_live_phase_is_a_clear_error() -> None:
    from kvroute_bench.crosscheck import run_crosscheck_command

    args = argparse.Namespace(
        workload="sharegpt",
        param=None,
        engine=None,
        pool=None,
        qps=1.0,
        duration=1.0,
        seed=0,
        config=None,
        latency_scorer=False,
        profile="tiny",
        replicas=2,
        response_processing="light",
        timeout=5.0,
        live="round-robin,nginx",
        no_virtual=True,
        predictor_after=60.0,
        out=None,
    )
    with pytest.raises(SystemExit, match="unknown phase 'nginx'"):
        run_crosscheck_command(args)
