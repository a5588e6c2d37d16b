"""Aliased control headers: the x-llm-d-* name first, the x-gateway-* alias as a fallback."""

from __future__ import annotations

import logging

import pytest

from kvroute.requestcontrol.headers import (
    ALIASED_HEADERS,
    MODEL_REWRITE,
    OBJECTIVE,
    STRIPPED_REQUEST_HEADERS,
    read_aliased,
)


def test_names_are_upstreams() -> None:
    assert {h.names for h in ALIASED_HEADERS} == {
        ("x-llm-d-inference-objective", "x-gateway-inference-objective"),
        ("x-llm-d-inference-fairness-id", "x-gateway-inference-fairness-id"),
        ("x-llm-d-model-name-rewrite", "x-gateway-model-name-rewrite"),
        ("x-llm-d-slo-ttft-ms", "x-slo-ttft-ms"),
        ("x-llm-d-slo-tpot-ms", "x-slo-tpot-ms"),
    }
    for header in ALIASED_HEADERS:
        assert set(header.names) <= set(STRIPPED_REQUEST_HEADERS)


@pytest.mark.parametrize(
    ("headers", "value"),
    [
        ({"x-llm-d-inference-objective": "new"}, "new"),
        ({"x-gateway-inference-objective": "old"}, "old"),
        ({"x-llm-d-inference-objective": "new", "x-gateway-inference-objective": "old"}, "new"),
        ({"x-llm-d-inference-objective": "", "x-gateway-inference-objective": "old"}, "old"),
        ({}, None),
    ],
)
def test_new_name_first_then_alias(headers: dict[str, str], value: str | None) -> None:
    assert read_aliased(headers, OBJECTIVE) == value


def test_conflict_is_logged_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    headers = {"x-llm-d-model-name-rewrite": "a", "x-gateway-model-name-rewrite": "b"}
    with caplog.at_level(logging.DEBUG, logger="kvroute.requestcontrol.headers"):
        assert read_aliased(headers, MODEL_REWRITE) == "a"
    (record,) = caplog.records
    assert record.levelno == logging.DEBUG
    assert "x-gateway-model-name-rewrite" in record.getMessage()
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="kvroute.requestcontrol.headers"):
        read_aliased(
            {"x-llm-d-model-name-rewrite": "a", "x-gateway-model-name-rewrite": "a"}, MODEL_REWRITE
        )
    assert caplog.records == []  # same value: no conflict
