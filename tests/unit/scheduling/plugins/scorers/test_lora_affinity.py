"""lora-affinity-scorer: 1.0 active / 0.8 free slot / 0.6 waiting / 0 otherwise (upstream order)."""

from __future__ import annotations

import pytest

from kvroute.scheduling.plugins.scorers.lora_affinity import LoraAffinityScorer
from tests.fakes import make_endpoint, make_request, make_state

CASES = [
    ({"active": ["sql-lora"], "max_active": 1}, 1.0),
    ({"active": ["sql-lora", "other"], "max_active": 2}, 1.0),
    ({"active": ["other"], "max_active": 4}, 0.8),
    ({"waiting_models": ["sql-lora"], "max_active": 4}, 0.8),
    ({"active": ["a"], "waiting_models": ["sql-lora"], "max_active": 2}, 0.6),
    ({"active": ["a", "b"], "max_active": 2}, 0.0),
    ({}, 0.0),
]
IDS = [
    "adapter active",
    "adapter active among others",
    "free adapter slot",
    "waiting but slots free: free slot wins (0.8 before 0.6)",
    "waiting, no free slot",
    "no slot, not loaded",
    "server without LoRA (max 0)",
]


@pytest.mark.parametrize(("metrics", "expected"), CASES, ids=IDS)
def test_lora_affinity_scorer(metrics: dict[str, object], expected: float) -> None:
    e = make_endpoint("e0", **metrics)  # type: ignore[arg-type]
    scores = LoraAffinityScorer().score(make_state(), make_request("sql-lora"), [e])
    assert scores == {"e0": expected}


def test_scores_the_target_model_not_the_incoming_name() -> None:
    e = make_endpoint("e0", active=["sql-lora-v2"], max_active=1)
    request = make_request("sql-lora", target="sql-lora-v2")
    assert LoraAffinityScorer().score(make_state(), request, [e]) == {"e0": 1.0}
