"""Scheduler-v2 configs end to end through the real Director and Datastore (no fakes).

The llm-d "token-aware" shape (prefix-cache-affinity-filter -> token-load-scorer), the built-in
default (session stickiness, a burst spread by the near-tie pick) and the latency profile with a
malformed SLO header (ignored, never an error) all go through the director's whole pipeline.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

from kvroute.config.epp_config import builtin_epp_config, load_epp_config, parse_epp_config
from kvroute.datastore.endpoint import EndpointMetrics
from kvroute.datastore.store import Datastore
from kvroute.plugins.registry import default_registry
from kvroute.protocol.openai import parse_request
from kvroute.requestcontrol.director import Director
from kvroute.requestcontrol.hooks import Usage
from kvroute.scheduling.builder import build_scheduling

NOW = 100.0
ROOT = Path(__file__).resolve().parents[4]

TOKEN_AWARE = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: prefix-cache-scorer
- {type: prefix-cache-affinity-filter, parameters: {affinityThreshold: 0.80}}
- type: token-load-scorer
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: prefix-cache-affinity-filter}
  - {pluginRef: token-load-scorer}
"""


def _director(config_text: str | None = None, path: Path | None = None) -> Director:
    registry = default_registry(include_entry_points=False)
    if path is not None:
        config = load_epp_config(path)
    elif config_text is not None:
        config = parse_epp_config(config_text)
    else:
        config = builtin_epp_config("default", registry)
    setup = build_scheduling(config, registry, rng=random.Random(1), clock=lambda: NOW)
    store = Datastore(clock=lambda: NOW)
    for i in range(4):
        store.upsert_endpoint(f"vllm-{i}", f"10.0.0.{i + 1}", 8000)
        store.update_metrics(f"vllm-{i}", EndpointMetrics(updated_at=NOW))
    return Director(
        store,
        None,
        setup.scheduler,
        setup.saturation_detector,
        setup.hooks,
        random.Random(2),
        clock=lambda: NOW,
    )


def _body(prompt: str) -> bytes:
    return json.dumps({"model": "m", "prompt": prompt, "max_tokens": 8}).encode()


def test_token_aware_shape_sticks_to_the_prefix_holder() -> None:
    d = _director(TOKEN_AWARE)
    prompt = "a long shared system prompt " * 30
    first = d.handle_request(parse_request(_body(prompt)), {}, "r0")
    again = [d.handle_request(parse_request(_body(prompt)), {}, f"r{i}") for i in range(1, 6)]
    assert {x.target.name for x in again} == {first.target.name}


def test_default_keeps_a_session_and_spreads_a_burst() -> None:
    d = _director()
    headers = {"x-session-id": "chat-42"}
    history = "system: you are a helpful assistant. " * 8
    first = d.handle_request(parse_request(_body(history)), headers, "s0")
    d.handle_response_complete(first, Usage(3, 8))
    for i in range(1, 4):
        history += f"user: question {i}? assistant: answer {i}. " * 4
        nxt = d.handle_request(parse_request(_body(history)), headers, f"s{i}")
        assert nxt.target.name == first.target.name
        d.handle_response_complete(nxt, Usage(3, 8))
    # a burst of unrelated requests decided on one scrape: in-flight counts spread it
    burst = [d.handle_request(parse_request(_body(f"q{i} " * 5)), {}, f"b{i}") for i in range(8)]
    per = Counter(x.target.name for x in burst)
    assert len(per) == 4
    assert max(per.values()) <= 3


def test_latency_profile_ignores_a_malformed_slo_header() -> None:
    d = _director(path=ROOT / "docs/results/sched-v2/latency-profile.yaml")
    for i, slo in enumerate(["fast please", "-3", "250"]):
        decision = d.handle_request(
            parse_request(_body("hi")), {"x-llm-d-slo-ttft-ms": slo}, f"l{i}"
        )
        assert decision.target.name.startswith("vllm-")
        d.handle_response_complete(decision, Usage(1, 8, first_token_at=NOW))
