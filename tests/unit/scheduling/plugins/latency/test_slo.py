"""SLO headers: new names first, old names accepted, malformed ignored with a debug log."""

from __future__ import annotations

import logging

import pytest

from kvroute.scheduling.plugins.latency.slo import NO_SLO, parse_slo


def test_names_and_units() -> None:
    slo = parse_slo({"x-llm-d-slo-ttft-ms": "250", "x-slo-tpot-ms": "20.5"})
    assert slo.ttft_s == pytest.approx(0.25)
    assert slo.tpot_s == pytest.approx(0.0205)
    assert parse_slo({"x-llm-d-slo-ttft-ms": "100", "x-slo-ttft-ms": "900"}).ttft_s == 0.1
    assert parse_slo({}) is NO_SLO


@pytest.mark.parametrize("bad", ["fast", "", "-5", "0", "nan", "inf"])
def test_malformed_is_ignored(bad: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="kvroute.scheduling.plugins.latency.slo"):
        slo = parse_slo({"x-llm-d-slo-ttft-ms": bad})
    assert slo.ttft_s is None
    if bad:
        assert "ignoring" in caplog.text
