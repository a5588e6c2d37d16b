"""The demo's trade-off line: printed exactly when a class is slower under kvroute."""

from __future__ import annotations

from kvroute_bench.demo.run import ClassRow, PhaseResult, trade_offs


def _row(p90: float, failed: int = 0) -> ClassRow:
    return ClassRow(
        sent=10, ok=10 - failed, shed=0, failed=failed, ttft_p50=0.3, ttft_p90=p90,
        e2e_p90=5.0, slo_met=1.0,
    )  # fmt: skip


def _phase(name: str, **rows: ClassRow) -> PhaseResult:
    return PhaseResult(name, dict(rows), wall_s=1.0)


def test_a_slower_class_gets_one_line_with_the_figures_and_the_cost() -> None:
    k = _phase("kvroute", all=_row(0.9, failed=2), Critical=_row(0.70), Standard=_row(0.8))
    rr = _phase("rr", all=_row(5.6, failed=43), Critical=_row(0.50), Standard=_row(19.6))
    lines = trade_offs(k, rr)
    assert len(lines) == 1
    assert lines[0].startswith("Trade-off: critical p90 TTFT 0.70 s vs 0.50 s round-robin:")
    assert "round-robin failed 43 requests overall, kvroute 2" in lines[0]


def test_no_line_within_the_margin_or_when_kvroute_is_faster() -> None:
    k = _phase("kvroute", all=_row(0.9), Critical=_row(0.52), Standard=_row(0.8))
    rr = _phase("rr", all=_row(5.6), Critical=_row(0.50), Standard=_row(19.6))
    assert trade_offs(k, rr) == []
