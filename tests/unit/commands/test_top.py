"""``kvroute top`` frames: every endpoint shown, markup in values printed literally."""

from __future__ import annotations

from rich.console import Console

from kvroute.commands.top import render
from kvroute.datastore.endpoint import Endpoint, EndpointLoad, EndpointMetrics
from kvroute.observability.decisions import DecisionLog
from kvroute.observability.pool_page import pool_state


def _text(state: dict[str, object]) -> str:
    console = Console(width=200, record=True, color_system=None)
    console.print(render(state))
    return console.export_text()


def test_frame_lists_endpoints_and_decisions_as_plain_text() -> None:
    m = EndpointMetrics(waiting_queue_size=7, active_models=frozenset({"[red]lora[/red]"}))
    eps = [
        Endpoint("a", "10.0.0.1", 8000, metrics=m, load=EndpointLoad(inflight=3)),
        Endpoint("b", "10.0.0.2", 8000),
    ]
    log = DecisionLog()
    log.add_decision(
        {
            "model": "[bold]m[/bold]", "priority": 0, "fairness_id": "default-flow",
            "pick": "a", "winning_score": 2.5, "fallbacks": ["b"], "primary_profile": "default",
            "profiles": {"default": [{"plugin": "queue-scorer", "kind": "scorer",
                                      "scores": {"a": 1.0, "b": 0.0}}]},
        }
    )  # fmt: skip
    log.add_completion("m", 200, 0.05, 0.5, 10)
    out = _text(pool_state("pool-1", eps, log))
    assert "10.0.0.1:8000" in out
    assert "10.0.0.2:8000" in out
    assert "[red]lora[/red]" in out  # literal, not styled away
    assert "[bold]m[/bold]" in out
    assert "-> a score 2.5 fallbacks b" in out
    assert "queue-scorer: a=1.0, b=0.0" in out
    assert "TTFT p50 50.0 ms" in out
