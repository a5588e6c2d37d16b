"""The demo's scenario: resources load, the config builds, the workload is what it says."""

from __future__ import annotations

from collections import Counter

from kvroute.config.epp_config import parse_epp_config
from kvroute.config.resources import load_resources_text
from kvroute.plugins.registry import default_registry
from kvroute.scheduling.builder import build_scheduling
from kvroute.scheduling.request import Criticality
from kvroute_bench.demo.scenario import (
    ADAPTERS,
    BASE_MODEL,
    EPP_CONFIG_YAML,
    MODELS,
    RESOURCES_YAML,
    DemoWorkload,
    for_round_robin,
    generate,
)


def test_resources_load_and_match_the_model_table() -> None:
    resources = load_resources_text(RESOURCES_YAML, "demo-resources.yaml")
    by_name = {m.spec.model_name: m for m in resources.models}
    assert set(by_name) == set(MODELS)
    for name, (targets, crit) in MODELS.items():
        spec = by_name[name].spec
        assert spec.criticality == crit.value
        assert [(t.name, t.weight) for t in spec.target_models] == list(targets)
    assert {t for ts, _ in MODELS.values() for t, _w in ts} == {BASE_MODEL, *ADAPTERS}


def test_epp_config_builds_with_lora_affinity() -> None:
    registry = default_registry(include_entry_points=False)
    setup = build_scheduling(parse_epp_config(EPP_CONFIG_YAML, "demo.yaml"), registry)
    assert "lora-affinity-scorer" in setup.plugins
    assert "prefix-cache-scorer" in setup.plugins


def test_workload_is_deterministic_and_mixed() -> None:
    w = DemoWorkload(rate=20, duration=30, seed=3)
    a, b = generate(w), generate(w)
    assert a == b
    assert all(0 <= r.arrival < 30 for r in a)
    assert 450 < len(a) < 750  # Poisson(600)
    share = Counter(r.criticality for r in a)
    assert abs(share[Criticality.CRITICAL] / len(a) - 0.4) < 0.07
    assert abs(share[Criticality.STANDARD] / len(a) - 0.3) < 0.07
    # critical chat shares one of the system prompts; nothing else shares a first token
    critical = [r for r in a if r.criticality is Criticality.CRITICAL]
    assert len({r.prompt[: w.system_prompt_len] for r in critical}) == w.system_prompts
    others = [r.prompt[0] for r in a if r.criticality is not Criticality.CRITICAL]
    assert len(set(others)) == len(others)


def test_round_robin_requests_name_targets_with_the_canary_split() -> None:
    reqs = generate(DemoWorkload(rate=50, duration=40, seed=1))
    rr = for_round_robin(reqs, seed=1)
    assert [r.request_id for r in rr] == [r.request_id for r in reqs]
    reviews = Counter(t.adapter for r, t in zip(reqs, rr, strict=True) if r.adapter == "review")
    assert set(reviews) == {"review-lora-v1", "review-lora-v2"}
    assert reviews["review-lora-v1"] > 4 * reviews["review-lora-v2"]
    for r, t in zip(reqs, rr, strict=True):
        if r.adapter == "assistant":
            assert t.adapter is None  # the base model
        if r.adapter == "batch-summarize":
            assert t.adapter == "summarize-lora"
