"""Workload generators: determinism, statistics of each preset, overrides, trace replay."""

from __future__ import annotations

import itertools
import random
import statistics
from pathlib import Path

import pytest

from kvroute.scheduling.request import Criticality
from kvroute_bench.arrivals import arrival_times
from kvroute_bench.workload import (
    PRESETS,
    TraceOptions,
    dump_trace,
    generate,
    load_trace,
    resolve_spec,
)


@pytest.mark.parametrize("name", sorted(PRESETS), ids=sorted(PRESETS))
def test_same_seed_same_requests_other_seed_different(name: str) -> None:
    spec = resolve_spec(name)
    a = generate(spec, rate=20, duration=5, seed=3)
    b = generate(spec, rate=20, duration=5, seed=3)
    c = generate(spec, rate=20, duration=5, seed=4)
    assert a == b
    assert a != c
    assert all(0 <= r.arrival < 5 for r in a)
    assert [r.arrival for r in a] == sorted(r.arrival for r in a)


@pytest.mark.parametrize(
    ("process", "shape", "cv"),
    [("poisson", 1.0, 1.0), ("gamma", 0.25, 2.0)],
    ids=["poisson-cv1", "gamma-k0.25-cv2"],
)
def test_arrival_rate_and_burstiness(process: str, shape: float, cv: float) -> None:
    times = arrival_times(random.Random(1), rate=50, duration=400, process=process, shape=shape)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(times) / 400 == pytest.approx(50, rel=0.1)
    # coefficient of variation of the gaps = 1/sqrt(k)
    assert statistics.pstdev(gaps) / statistics.fmean(gaps) == pytest.approx(cv, rel=0.1)


def test_sharegpt_lengths_have_the_configured_means_and_no_reuse() -> None:
    reqs = generate(resolve_spec("sharegpt"), rate=200, duration=20, seed=1)
    assert statistics.fmean(r.prompt_len for r in reqs) == pytest.approx(220, rel=0.1)
    assert statistics.fmean(r.output_len for r in reqs) == pytest.approx(200, rel=0.1)
    first_tokens = {r.prompt[0] for r in reqs}
    assert len(first_tokens) == len(reqs)  # disjoint token ranges: nothing can be cached


def test_shared_prefix_prompts_share_their_group_system_prompt() -> None:
    spec = resolve_spec(
        "shared-prefix",
        {
            "num_groups": "3",
            "prompts_per_group": "2",
            "system_prompt_len": "64",
            "question_len": "16",
            "output_len": "8",
        },
    )
    reqs = generate(spec, rate=100, duration=2, seed=0)
    by_group: dict[str, set[tuple[int, ...]]] = {}
    for r in reqs:
        assert r.prompt_len == 80
        assert r.output_len == 8
        by_group.setdefault(r.group, set()).add(r.prompt[:64])
    assert len(by_group) == 3
    assert all(len(prefixes) == 1 for prefixes in by_group.values())
    assert len({r.prompt for r in reqs}) <= 6  # 3 groups x 2 fixed prompts


def test_multi_turn_prompt_grows_with_the_session_history() -> None:
    spec = resolve_spec(
        "multi-turn",
        {
            "num_groups": "1",
            "prompts_per_group": "1",
            "system_prompt_len": "32",
            "question_len": "8",
            "output_len": "4",
            "turns": "3",
        },
    )
    reqs = generate(spec, rate=10, duration=2, seed=0)
    lens = [r.prompt_len for r in reqs[:4]]
    # turn k: 32 + (k-1)*(8+4) + 8; after 3 turns the session restarts
    assert lens == [40, 52, 64, 40]
    assert reqs[1].prompt[: reqs[0].prompt_len] == reqs[0].prompt


def test_multi_lora_adapter_popularity_is_zipf() -> None:
    spec = resolve_spec("multi-lora", {"num_adapters": "8", "zipf_s": "1.0"})
    reqs = generate(spec, rate=500, duration=10, seed=2)
    counts = [sum(1 for r in reqs if r.adapter == f"adapter-{k}") for k in range(8)]
    harmonic = sum(1 / k for k in range(1, 9))
    assert counts[0] / len(reqs) == pytest.approx(1 / harmonic, rel=0.1)
    assert counts[0] > counts[3] > counts[7]


def test_mixed_criticality_fraction_and_slo() -> None:
    reqs = generate(resolve_spec("mixed-criticality"), rate=300, duration=10, seed=0)
    crit = [r for r in reqs if r.criticality is Criticality.CRITICAL]
    assert len(crit) / len(reqs) == pytest.approx(0.3, abs=0.03)
    assert all(r.ttft_slo == 0.5 for r in crit)
    assert {r.criticality for r in reqs} == {Criticality.CRITICAL, Criticality.SHEDDABLE}


def test_unknown_parameter_and_preset_are_errors() -> None:
    with pytest.raises(ValueError, match="unknown workload parameter 'nope'"):
        resolve_spec("sharegpt", {"nope": "1"})
    with pytest.raises(ValueError, match="unknown workload 'x'"):
        resolve_spec("x")


def test_trace_round_trip(tmp_path: Path) -> None:
    reqs = generate(resolve_spec("mixed-criticality"), rate=20, duration=2, seed=0)
    path = tmp_path / "t.jsonl"
    dump_trace(reqs, path)
    assert load_trace(path) == reqs


def test_mooncake_hash_ids_share_blocks(tmp_path: Path) -> None:
    path = tmp_path / "mooncake.jsonl"
    path.write_text(
        '{"timestamp": 0, "input_length": 6, "output_length": 2, "hash_ids": [7, 8]}\n'
        '{"timestamp": 500, "input_length": 5, "output_length": 3, "hash_ids": [7, 9]}\n'
    )
    a, b = load_trace(path, TraceOptions(hash_block=4))
    assert b.arrival == pytest.approx(0.5)
    assert a.prompt[:4] == b.prompt[:4] == (28, 29, 30, 31)  # block 7 -> ids 28..31
    assert a.prompt[4:] == (32, 33)
    assert b.prompt[4:] == (36,)
    assert (a.output_len, b.output_len) == (2, 3)


def test_trace_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"arrival": 0, "prompt_len": 3}\n{"arrival": 1}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        load_trace(path)
