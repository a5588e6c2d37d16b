"""Cost figures on a mixed pool (issue 13): the arithmetic, the ``mixed-accelerators`` preset's
pool and labels, and a small virtual-time run of cost-aware routing against the default
profile (real ``kvroute_sim`` engines, kvroute's real scheduler; deterministic)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml

from kvroute.config.epp_config import KVROUTE_DEFAULT_CONFIG_TEXT
from kvroute.sdk import Criticality, endpoint_hardware
from kvroute_bench.cluster import RunConfig, run_stage
from kvroute_bench.cost import (
    GCP_LIST_PRICES,
    cost_figures,
    parse_prices,
    replica_labels,
    replica_output_tokens,
    ttft_attainment,
)
from kvroute_bench.metrics import RequestRecord, Slo
from kvroute_bench.pool import PoolView
from kvroute_bench.report import build_results, markdown
from kvroute_bench.sim_replica import SimReplica, replica_config
from kvroute_bench.sweep import EPP_CONFIG_FILES, SweepSpec, add_cost, run_one
from kvroute_bench.workload import BenchRequest, generate, resolve_spec
from kvroute_sim.accelerators import parse_pool

H100 = replica_config("h100-llama3-8b")


def test_parse_prices_and_bad_items() -> None:
    assert parse_prices("h100=11.06, L4=0.71") == {"h100": 11.06, "l4": 0.71}
    assert parse_prices("") == {}
    for bad in ("h100", "tpu=1", "h100=cheap", "l4=-1", "l4=nan"):
        with pytest.raises(ValueError, match="bad price"):
            parse_prices(bad)


def test_cost_figures_by_hand() -> None:
    # h100: $10/h, 1000 tok/s at saturation; l4: $1/h, 200 tok/s. One hour, 1M tokens each.
    out = cost_figures(
        accelerators=("h100", "l4"),
        prices={"h100": 10.0, "l4": 1.0},
        capacity_tok_s={"h100": 1000.0, "l4": 200.0},
        replica_tokens=(1_000_000, 1_000_000),
        replica_busy_s=(1800.0, 3600.0),
        window_s=3600.0,
    )
    assert out["output_tokens"] == 2_000_000
    assert out["cost_per_m_provisioned"] == pytest.approx((10 + 1) / 2)
    assert out["cost_per_m_busy"] == pytest.approx((10 * 0.5 + 1 * 1.0) / 2)
    h100_per_m, l4_per_m = 10 / 1000 / 3600 * 1e6, 1 / 200 / 3600 * 1e6
    assert out["class_cost_per_m"] == pytest.approx({"h100": h100_per_m, "l4": l4_per_m})
    assert out["cost_per_m_work"] == pytest.approx((h100_per_m + l4_per_m) / 2)
    assert out["token_share"] == {"h100": 0.5, "l4": 0.5}
    # No tokens: no cost per token (NaN), not a division error.
    empty = cost_figures(
        accelerators=("l4",),
        prices={},
        capacity_tok_s={"l4": 200.0},
        replica_tokens=(0,),
        replica_busy_s=(0.0,),
        window_s=10.0,
    )
    assert math.isnan(empty["cost_per_m_work"])


def _rec(
    rid: str, sent: float, ttft: float | None, crit: Criticality, slo: float | None
) -> RequestRecord:
    req = BenchRequest(rid, sent, (1, 2, 3), 10, criticality=crit, ttft_slo=slo)
    first = None if ttft is None else sent + ttft
    return RequestRecord(req, sent, replica=0, first_token=first, finish=first, output_tokens=10)


def test_ttft_attainment_counts_misses_shed_and_the_window() -> None:
    recs = [
        _rec("a", 1.0, 0.4, Criticality.CRITICAL, 0.5),  # met
        _rec("b", 1.0, 0.6, Criticality.CRITICAL, 0.5),  # missed
        _rec("c", 1.0, 0.9, Criticality.STANDARD, None),  # met the run's 1 s
        _rec("d", 1.0, None, Criticality.STANDARD, None),  # never answered: missed
        _rec("e", 0.1, 0.1, Criticality.STANDARD, None),  # before the window: not counted
    ]
    shed = _rec("f", 2.0, None, Criticality.SHEDDABLE, 2.0)
    shed.shed = True
    att = ttft_attainment([*recs, shed], (0.5, 10.0), Slo(ttft=1.0))
    assert att == {"overall": 2 / 5, "Critical": 0.5, "Standard": 0.5, "Sheddable": 0.0}
    assert replica_output_tokens(recs, (0.5, 10.0), 2) == [40, 0]


class _LabelSpy:
    name = "spy"

    def __init__(self) -> None:
        self.labels: list[dict[str, str]] = []

    def pick(self, request: BenchRequest, pool: PoolView, now: float) -> int:
        if not self.labels:
            self.labels = [dict(e.labels) for e in pool.endpoints]
        return 0

    def on_complete(self, request: BenchRequest, replica: int, now: float) -> None:
        del request, replica, now


def test_preset_builds_the_mixed_pool_with_classes_and_costs() -> None:
    spec = resolve_spec("mixed-accelerators")
    accs = parse_pool(spec.pool)
    assert accs == ["h100"] * 4 + ["l4"] * 8
    prices = parse_prices(spec.prices)
    assert prices == {"h100": GCP_LIST_PRICES["h100"], "l4": GCP_LIST_PRICES["l4"]}
    sweep = SweepSpec(
        workload=spec,
        engine=H100,
        replicas=12,
        policies=(),
        qps=(),
        duration=1.0,
        accelerators=tuple(accs),
    )
    cfgs = sweep.replica_configs()
    assert cfgs[0] == H100
    assert cfgs[4].num_gpu_blocks < H100.num_gpu_blocks / 5
    # The labels reach the router's endpoints, and kvroute reads them back as class + price.
    spy = _LabelSpy()
    requests = generate(spec, rate=4.0, duration=1.0, seed=0)
    run_stage(
        requests,
        [SimReplica(c) for c in cfgs],
        spy,
        offered_qps=4.0,
        duration=1.0,
        config=RunConfig(drain=1.0),
        labels=replica_labels(accs, prices),
    )
    hw = [endpoint_hardware(lab) for lab in spy.labels]
    assert [h.name for h in hw] == accs
    assert [h.cost_per_hour for h in hw] == [11.06] * 4 + [0.71] * 8
    # The traffic: three tiers, each request carrying its own TTFT SLO as a header.
    reqs = generate(spec, rate=50.0, duration=10.0, seed=0)
    by = {c: [r for r in reqs if r.criticality is c] for c in Criticality}
    assert 0.15 < len(by[Criticality.CRITICAL]) / len(reqs) < 0.25
    assert 0.25 < len(by[Criticality.SHEDDABLE]) / len(reqs) < 0.35
    assert {r.ttft_slo for r in by[Criticality.CRITICAL]} == {0.5}
    assert {r.headers["x-slo-ttft-ms"] for r in by[Criticality.STANDARD]} == {"1000"}


def test_cost_aware_profile_is_the_default_plus_the_scorer() -> None:
    shipped = yaml.safe_load(Path(EPP_CONFIG_FILES["cost-aware"]).read_text())
    shipped["plugins"] = [p for p in shipped["plugins"] if p["type"] != "cost-aware-scorer"]
    prof = shipped["schedulingProfiles"][0]
    prof["plugins"] = [p for p in prof["plugins"] if p["pluginRef"] != "cost-aware-scorer"]
    assert shipped == yaml.safe_load(KVROUTE_DEFAULT_CONFIG_TEXT)


def _small_run(policies: Sequence[str]) -> dict[str, dict[str, object]]:
    """1 H100 + 3 L4 at a light load, 20 virtual seconds; the class capacities are the ones the
    saturation probe measures on this workload (docs/benchmarks.md), given here to keep the
    test fast."""
    workload = resolve_spec("mixed-accelerators")
    accs = ("h100", "l4", "l4", "l4")
    spec = SweepSpec(
        workload=workload,
        engine=H100,
        replicas=len(accs),
        policies=tuple(policies),
        qps=(6.0,),
        duration=20.0,
        seed=0,
        run=RunConfig(warmup=4.0, drain=300.0),
        accelerators=accs,
    )
    requests = generate(workload, rate=6.0, duration=20.0, seed=0)
    out = {}
    for policy in policies:
        result = run_one(spec, policy, requests, 6.0)
        add_cost(spec, result, {"h100": 9446.4, "l4": 900.0})
        out[policy] = result.metrics.to_json()
    return out


def test_cost_aware_costs_less_per_token_than_the_default_at_the_same_attainment() -> None:
    runs = _small_run(("kvroute", "cost-aware"))
    base, cheap = runs["kvroute"]["extra"], runs["cost-aware"]["extra"]
    assert isinstance(base, dict)
    assert isinstance(cheap, dict)
    # Same traffic, all of it served.
    assert cheap["cost"]["output_tokens"] == base["cost"]["output_tokens"] > 0
    assert cheap["cost"]["cost_per_m_work"] < 0.9 * base["cost"]["cost_per_m_work"]
    assert cheap["cost"]["token_share"]["l4"] > base["cost"]["token_share"]["l4"]
    # The fixed pool's bill is the same for both: only the work cost tells them apart.
    assert cheap["cost"]["cost_per_m_provisioned"] == pytest.approx(
        base["cost"]["cost_per_m_provisioned"]
    )
    assert cheap["ttft_slo_attainment"]["Critical"] == 1.0
    assert cheap["ttft_slo_attainment"]["overall"] >= base["ttft_slo_attainment"]["overall"] - 0.01
    # The report renders the cost table from the same JSON.
    results = build_results({"title": "t"}, [(6.0, {})])
    results["stages"][0]["policies"] = runs
    text = markdown(json.loads(json.dumps(results)))
    assert "tokens by class | $/M work |" in text
    assert "| cost-aware | " in text
    assert "l4 " in text
