"""Scheduler-v2 workloads: heavy-tailed lengths, agent sessions, code generation, reasoning."""

from __future__ import annotations

import itertools
import random
import statistics
from pathlib import Path

import pytest

from kvroute_bench.workload import (
    SESSION_HEADER,
    draw_len,
    dump_trace,
    generate,
    load_trace,
    resolve_spec,
)


@pytest.mark.parametrize("dist", ["lognormal", "pareto"])
def test_length_draws_keep_the_mean(dist: str) -> None:
    rng = random.Random(5)
    xs = [draw_len(rng, dist, 200.0, 0.9, 2.5, 1, 10**9) for _ in range(40_000)]
    assert statistics.fmean(xs) == pytest.approx(200.0, rel=0.05)


def test_pareto_has_the_heavier_tail_at_the_same_mean() -> None:
    rng = random.Random(1)
    logn = sorted(draw_len(rng, "lognormal", 200.0, 0.9, 1.8, 1, 10**9) for _ in range(50_000))
    par = sorted(draw_len(rng, "pareto", 200.0, 0.9, 1.8, 1, 10**9) for _ in range(50_000))
    assert par[int(0.9999 * len(par))] > 2 * logn[int(0.9999 * len(logn))]
    # Pareto's minimum is x_m = mean * (alpha - 1) / alpha
    assert min(par) == round(200.0 * 0.8 / 1.8)


def test_unknown_distribution_and_bad_alpha_are_errors() -> None:
    rng = random.Random(0)
    with pytest.raises(ValueError, match="unknown length distribution 'zipf'"):
        draw_len(rng, "zipf", 10.0, 1.0, 2.0, 1, 100)
    with pytest.raises(ValueError, match="pareto_alpha must be > 1"):
        draw_len(rng, "pareto", 10.0, 1.0, 1.0, 1, 100)


def test_reasoning_is_short_in_long_out_and_fits_the_context() -> None:
    reqs = generate(resolve_spec("reasoning"), rate=100, duration=20, seed=2)
    assert statistics.fmean(r.prompt_len for r in reqs) < 200
    assert statistics.fmean(r.output_len for r in reqs) > 1000
    assert max(r.output_len for r in reqs) == 3000  # the Pareto tail reaches the clip
    assert all(r.prompt_len + r.output_len <= 4096 for r in reqs)


def test_code_generation_shares_repository_contexts() -> None:
    spec = resolve_spec("code-generation")
    reqs = generate(spec, rate=100, duration=20, seed=2)
    assert statistics.fmean(r.prompt_len for r in reqs) > 10 * statistics.fmean(
        r.output_len for r in reqs
    )
    by_repo: dict[str, set[tuple[int, ...]]] = {}
    for r in reqs:
        by_repo.setdefault(r.group, set()).add(r.prompt[: spec.system_prompt_len])
        assert r.prompt_len <= spec.max_input
    assert all(len(ctx) == 1 for ctx in by_repo.values())  # one context per repository
    assert len({next(iter(c)) for c in by_repo.values()}) == len(by_repo)
    counts = sorted((sum(r.group == g for r in reqs) for g in by_repo), reverse=True)
    assert counts[0] > 5 * counts[len(counts) // 2]  # Zipf popularity


def test_agent_session_history_grows_and_ids_change_at_session_end() -> None:
    spec = resolve_spec("agent-sessions")
    reqs = generate(spec, rate=50, duration=60, seed=3)
    by_session: dict[str, list[tuple[int, ...]]] = {}
    for r in reqs:
        assert r.session_id is not None
        assert r.headers == {SESSION_HEADER: r.session_id}
        assert r.prompt_len + r.output_len <= spec.max_context
        by_session.setdefault(r.session_id, []).append(r.prompt)
    multi = [p for p in by_session.values() if len(p) > 2]
    assert len(multi) > 20
    for prompts in multi:
        for earlier, later in itertools.pairwise(prompts):
            assert later[: len(earlier)] == earlier  # the whole previous prompt is history
            assert len(later) > len(earlier)
    turns = [len(p) for p in by_session.values()]
    assert 2 < statistics.fmean(turns) < spec.turns + 2  # geometric, capped by the context


def test_multi_turn_carries_a_session_id_per_conversation() -> None:
    reqs = generate(resolve_spec("multi-turn"), rate=50, duration=20, seed=1)
    assert all(r.session_id and r.session_id.startswith(r.group + ".") for r in reqs)
    assert generate(resolve_spec("sharegpt"), rate=5, duration=2, seed=1)[0].headers == {}


def test_heterogeneous_preset_names_a_pool_and_sharegpt_lengths() -> None:
    het, base = resolve_spec("heterogeneous"), resolve_spec("sharegpt")
    assert het.pool
    assert not base.pool
    assert generate(het, rate=20, duration=3, seed=4) == generate(base, rate=20, duration=3, seed=4)


def test_session_ids_survive_a_trace_round_trip(tmp_path: Path) -> None:
    reqs = generate(resolve_spec("agent-sessions"), rate=20, duration=3, seed=0)
    path = tmp_path / "agent.jsonl"
    dump_trace(reqs, path)
    assert load_trace(path) == reqs
