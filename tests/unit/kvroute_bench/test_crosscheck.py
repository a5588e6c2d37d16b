"""The live/virtual comparison table of the cross-check (pure part)."""

from __future__ import annotations

import pytest

from kvroute_bench.crosscheck import COMPARE, compare
from kvroute_bench.metrics import EngineCounters, RequestRecord, Slo, StageMetrics, summarize
from kvroute_bench.workload import BenchRequest


def _metrics(ttft: float) -> StageMetrics:
    req = BenchRequest("r", 0.0, (1, 2), 4)
    rec = RequestRecord(req, sent=0.0, first_token=ttft, finish=ttft + 0.3, output_tokens=4)
    return summarize(
        [rec],
        policy="p",
        offered_qps=1,
        window=(0.0, 1.0),
        end=2.0,
        output_tokens_in_window=4,
        counters=EngineCounters(),
        slo=Slo(),
    )


def test_ratios_per_mode() -> None:
    live = {"round-robin": _metrics(0.4), "kvroute": _metrics(0.1)}
    virtual = {"round-robin": _metrics(0.3), "kvroute": _metrics(0.2)}
    table = compare(live, virtual)
    assert set(table) == set(COMPARE)
    assert table["ttft_p90"]["live"]["rr_over_kvroute"] == pytest.approx(4.0)
    assert table["ttft_p90"]["virtual"]["rr_over_kvroute"] == pytest.approx(1.5)
    assert table["output_tok_s"]["live"]["rr_over_kvroute"] == pytest.approx(1.0)


def test_markdown_table_marks_direction() -> None:
    from kvroute_bench.crosscheck import markdown_table

    live = {"round-robin": _metrics(0.4), "kvroute": _metrics(0.1)}
    virtual = {"round-robin": _metrics(0.3), "kvroute": _metrics(0.2)}
    table = markdown_table(compare(live, virtual))
    rows = table.splitlines()
    ttft = next(r for r in rows if r.startswith("| TTFT p90"))
    assert "| 4.00 |" in ttft
    assert "| 1.50 |" in ttft
    assert ttft.endswith("| yes |")
    flipped = markdown_table(
        compare(live, {"round-robin": _metrics(0.1), "kvroute": _metrics(0.3)})
    )
    assert next(r for r in flipped.splitlines() if r.startswith("| TTFT p90")).endswith("| no |")
