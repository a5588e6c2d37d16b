"""Per-request cost of each prefix-routing level, and index memory at 100k blocks per server.

Run::

    .venv/bin/pytest -q -m bench --benchmark-enable tests/bench/test_prefix_bench.py -s

Each timed call is one whole request cycle of the plugin as the director runs it
(``prepare_data`` + ``score`` + ``pre_request``) over 10 endpoints whose index already holds
the request's prefix on one server and 100k unrelated blocks on each (upstream-sized state).
Prompts of 4 KB and 32 KB of English-like text. Level 2/3 use a real byte-level BPE tokenizer
(``tokenizers``, trained here on the same kind of text: 742 tokens per 4 KB) with its
cache disabled ("miss", every prompt new) or warm ("hit", the same prompt again). The memory
tests print bytes per cached block (tracemalloc) and assert a generous bound so a regression
that doubles it is caught; they are deterministic, not timings.
"""

from __future__ import annotations

import random
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from kvroute.datalayer.kvevents import AllBlocksCleared, BlockRemoved, BlockStored, KvEventBatch
from kvroute.datalayer.tokenization import PromptTokenizer
from kvroute.datastore.endpoint import Endpoint, EndpointMetrics
from kvroute.scheduling.interfaces import CycleState, ProfileResult, SchedulingResult
from kvroute.scheduling.plugins.prefix.approximate import PrefixCacheParams, PrefixCacheScorer
from kvroute.scheduling.plugins.prefix.index import PrefixIndex
from kvroute.scheduling.plugins.prefix.precise import (
    PrecisePrefixCacheScorer,
    PrecisePrefixParams,
)
from kvroute.scheduling.plugins.prefix.precise_index import PreciseIndex
from kvroute.scheduling.request import ApiKind, InferenceRequest

if TYPE_CHECKING:
    from kvroute_bench.workload import BenchRequest

pytestmark = pytest.mark.bench

_SENTENCE = (
    "the model server keeps a cache of attention keys and values per token block so that "
    "a request sharing a prefix with an earlier one skips part of its prefill while the "
    "router decides where each conversation should go next given load and locality"
)
_WORDS = _SENTENCE.split()
BLOCKS_PER_SERVER = 100_000


def _text(n_chars: int, seed: int) -> str:
    rng = random.Random(seed)
    out: list[str] = []
    size = 0
    while size < n_chars:
        w = rng.choice(_WORDS)
        out.append(w)
        size += len(w) + 1
    return " ".join(out)[:n_chars]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2000,
        special_tokens=["<s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_text(2000, s) for s in range(50)], trainer)
    directory = tmp_path_factory.mktemp("bpe")
    tok.save(str(directory / "tokenizer.json"))
    return directory


def _endpoints() -> list[Endpoint]:
    return [
        Endpoint(
            name=f"e{i}",
            address="10.0.0.1",
            port=8000 + i,
            metrics=EndpointMetrics(cache_block_size=16, waiting_queue_size=i),
        )
        for i in range(10)
    ]


def _request(prompt: str) -> InferenceRequest:
    return InferenceRequest(
        request_id="r",
        incoming_model="m",
        target_model="m",
        api=ApiKind.COMPLETIONS,
        body=MappingProxyType({"prompt": prompt}),
        prompt_text=prompt,
    )


CycleFn = Callable[[], None]


def _cycle_fn(
    plugin: PrefixCacheScorer | PrecisePrefixCacheScorer,
    endpoints: list[Endpoint],
    requests: Callable[[], InferenceRequest],
) -> CycleFn:
    result = SchedulingResult({"default": ProfileResult((endpoints[3],))}, "default")

    def cycle() -> None:
        request = requests()
        state = CycleState(0.0)
        plugin.prepare_data(state, request, endpoints)
        plugin.score(state, request, endpoints)
        plugin.pre_request(state, request, result)

    return cycle


def _state_blocks(benchmark: pytest.FixtureRequest) -> int:
    """Full-size state when timing; a small one when the suite runs benchmarks once as tests."""
    return 2_000 if getattr(benchmark, "disabled", False) else BLOCKS_PER_SERVER


def _fill_approx(plugin: PrefixCacheScorer, endpoints: list[Endpoint], blocks: int) -> None:
    for i, e in enumerate(endpoints):
        base = (i + 1) << 40
        plugin.index.add(e.name, range(base, base + blocks))


@pytest.mark.parametrize("size_kb", [4, 32], ids=["4KB", "32KB"])
@pytest.mark.parametrize("level", ["level1", "level2-miss", "level2-hit"])
def test_approximate_cycle_cost(
    benchmark: pytest.FixtureRequest, tokenizer_dir: Path, level: str, size_kb: int
) -> None:
    endpoints = _endpoints()
    tokenizer = None
    if level != "level1":
        cache = 0 if level.endswith("miss") else 16
        tokenizer = PromptTokenizer.from_directory(tokenizer_dir, cache_size=cache)
    # 32 KB is ~9k tokens: let the match cover the whole prompt (upstream caps at 256 blocks)
    params = PrefixCacheParams(maxPrefixBlocksToMatch=1024, lruCapacityPerServer=200_000)
    plugin = PrefixCacheScorer("p", params, tokenizer=tokenizer)
    _fill_approx(plugin, endpoints, _state_blocks(benchmark))
    prompt = _text(size_kb * 1024, seed=size_kb)
    request = _request(prompt)
    level_seen, hashes = plugin.hash_request(request, endpoints)
    plugin.index.add("e3", hashes)
    benchmark.group = f"prefix-{size_kb}KB"  # type: ignore[attr-defined]
    benchmark.extra_info["blocks"] = len(hashes)  # type: ignore[attr-defined]
    benchmark(_cycle_fn(plugin, endpoints, lambda: request))  # type: ignore[operator]
    assert level_seen == (1 if level == "level1" else 2)
    state = CycleState(0.0)
    plugin.prepare_data(state, request, endpoints)  # the director always runs PrepareData
    assert plugin.score(state, request, endpoints)["e3"] == 1.0


@pytest.mark.parametrize("size_kb", [4, 32], ids=["4KB", "32KB"])
@pytest.mark.parametrize("cache", ["miss", "hit"])
def test_precise_cycle_cost(
    benchmark: pytest.FixtureRequest, tokenizer_dir: Path, cache: str, size_kb: int
) -> None:
    endpoints = _endpoints()
    tokenizer = PromptTokenizer.from_directory(
        tokenizer_dir, cache_size=0 if cache == "miss" else 16
    )
    plugin = PrecisePrefixCacheScorer(
        "p", PrecisePrefixParams(subscribe=False), tokenizer=tokenizer
    )
    _fill_precise(plugin.index, [e.name for e in endpoints], _state_blocks(benchmark))
    prompt = _text(size_kb * 1024, seed=size_kb)
    request = _request(prompt)
    ids = tuple(tokenizer.encode_text(prompt))
    n = len(ids) // 16
    stored = BlockStored(tuple(range(-n, 0)), None, ids[: n * 16], 16)
    plugin.index.apply("e3", KvEventBatch(0.0, (stored,)))
    benchmark.group = f"prefix-{size_kb}KB"  # type: ignore[attr-defined]
    benchmark.extra_info["blocks"] = n  # type: ignore[attr-defined]
    benchmark(_cycle_fn(plugin, endpoints, lambda: request))  # type: ignore[operator]
    state = CycleState(0.0)
    plugin.prepare_data(state, request, endpoints)  # the director always runs PrepareData
    assert plugin.score(state, request, endpoints)["e3"] == 1.0


def _fill_precise(index: PreciseIndex, servers: list[str], blocks: int = BLOCKS_PER_SERVER) -> None:
    """``blocks`` distinct cached blocks per server, in 16-token blocks published 50 at a time."""
    for s_i, server in enumerate(servers):
        parent = None
        for start in range(0, blocks, 50):
            hashes = tuple((s_i << 40) + start + j for j in range(50))
            tokens = tuple(range(s_i * 7 + start, s_i * 7 + start + 50 * 16))
            index.apply(server, KvEventBatch(0.0, (BlockStored(hashes, parent, tokens, 16),)))
            parent = hashes[-1]


def _measure(build: Callable[[], object]) -> tuple[int, object]:
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    obj = build()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return after - before, obj


def _memory_blocks(request: pytest.FixtureRequest) -> int:
    """100k blocks per server when benchmarking (the documented figure); 20k in the default
    suite, where dicts are proportionally fuller (about 140 / 210 B per block)."""
    config = request.config
    disabled = config.getoption("benchmark_disable") and not config.getoption("benchmark_enable")
    return 20_000 if disabled else BLOCKS_PER_SERVER


@pytest.mark.parametrize("servers", [1, 4], ids=["1-server", "4-servers"])
def test_approximate_index_memory(request: pytest.FixtureRequest, servers: int) -> None:
    blocks = _memory_blocks(request)

    def build() -> PrefixIndex:
        index = PrefixIndex(blocks)
        for s in range(servers):
            base = (s + 1) << 40
            index.add(f"e{s}", range(base, base + blocks))
        return index

    used, index = _measure(build)
    per_block = used / (servers * blocks)
    print(
        f"\napproximate index: {servers} x {blocks} blocks -> "
        f"{used / 2**20:.1f} MiB, {per_block:.0f} B/block"
    )
    assert isinstance(index, PrefixIndex)
    assert index.size("e0") == blocks
    assert per_block < 260


def test_precise_index_memory(request: pytest.FixtureRequest) -> None:
    blocks = _memory_blocks(request)
    index = PreciseIndex()
    used, _ = _measure(lambda: _fill_precise(index, ["e0"], blocks))
    per_block = used / blocks
    print(
        f"\nprecise index: 1 x {blocks} blocks -> {used / 2**20:.1f} MiB, {per_block:.0f} B/block"
    )
    assert index.size("e0") == blocks
    assert per_block < 400


# -- cluster level: virtual-time pool of simulated vLLM engines --------------------------------
#
# Policies (all on the same generated requests and identical fresh engines per run):
#   round-robin   the harness's baseline
#   load-only     kvroute with queue-scorer 2 + kv-cache-utilization-scorer 2 (no prefix)
#   level1        kvroute's default profile: + prefix-cache-scorer 3 (characters, upstream)
#   level1-pure   the same with hotspotPolicy: none (upstream behaviour exactly)
#   level2        the default profile, the prefix scorer hashing engine-aligned token blocks
#   level3        queue 2 + kv 2 + precise-prefix-cache-scorer 3 fed by the engines' KV events
# and the pooled-cache oracle's hit rate (kvroute_bench.cache_bound, one LRU of the pool's size).
#
# The workload's prompts are token ids rendered as short words (kvroute_bench.text), a mapping
# that is not invertible, so the tokenizer for levels 2-3 looks each prompt's text up among the
# stage's requests and returns their exact ids: ``_WordIdTokenizer``. Level 3 applies each
# step's events when the step starts (the harness has no hook at its end): optimistic by one
# step (tens of ms), the same order as the speculative entries' 2 s TTL already assumes.

LOAD_ONLY = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: queue-scorer, weight: 2}
  - {pluginRef: kv-cache-utilization-scorer, weight: 2}
  - {pluginRef: max-score-picker}
"""

PREFIX_CONFIG = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: {prefix_type}
  parameters: {params}
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - {{pluginRef: queue-scorer, weight: 2}}
  - {{pluginRef: kv-cache-utilization-scorer, weight: 2}}
  - {{pluginRef: {prefix_type}, weight: 3}}
  - {{pluginRef: max-score-picker}}
"""


class _WordIdTokenizer:
    """The bench workload's prompt text back to its token ids (looked up in the stage)."""

    def __init__(self, requests: Sequence[BenchRequest]) -> None:
        self._ids = {r.text(): r.prompt for r in requests}

    def encode_request(self, request: InferenceRequest) -> list[int] | None:
        prompt = request.body.get("prompt")
        if not isinstance(prompt, str) or prompt not in self._ids:
            return None
        return list(self._ids[prompt])


def _prefix_plugins(router: object) -> list[object]:
    scheduler = router.director.scheduler  # type: ignore[attr-defined]
    return [ws.scorer for p in scheduler.profiles.values() for ws in p.scorers]


def _cluster_router(
    policy: str, tmp: Path, tokenizer_dir: Path, seed: int, requests: Sequence[BenchRequest]
) -> object:
    from kvroute_bench.baselines import BASELINES
    from kvroute_bench.epp_router import EppRouter

    if policy == "round-robin":
        return BASELINES["round-robin"](seed)
    if policy in ("load-only", "level1-pure", "level3"):
        if policy == "load-only":
            text = LOAD_ONLY
        elif policy == "level1-pure":
            text = PREFIX_CONFIG.format(
                prefix_type="prefix-cache-scorer", params="{hotspotPolicy: none}"
            )
        else:
            text = PREFIX_CONFIG.format(
                prefix_type="precise-prefix-cache-scorer",
                params=f"{{tokenizer: '{tokenizer_dir}', subscribe: false}}",
            )
        path = tmp / f"{policy}.yaml"
        path.write_text(text)
        router = EppRouter(policy, str(path), seed=seed)
    else:
        router = EppRouter(policy, "default", seed=seed)
    if policy in ("level2", "level3"):
        for plugin in _prefix_plugins(router):
            if isinstance(plugin, PrefixCacheScorer | PrecisePrefixCacheScorer):
                plugin.tokenizer = _WordIdTokenizer(requests)
    return router


def _engines(policy: str, router: object, n: int, overrides: dict[str, object]) -> list[object]:
    from kvroute_bench.sim_replica import SimReplica, replica_config
    from kvroute_sim import kvcache
    from kvroute_sim.engine import Engine, StepOutcome

    cfg = replica_config("h100-llama3-8b", {**overrides, "kv_events": policy == "level3"})
    replicas = [SimReplica(cfg) for _ in range(n)]
    if policy != "level3":
        return list(replicas)
    (precise,) = [p for p in _prefix_plugins(router) if isinstance(p, PrecisePrefixCacheScorer)]

    class EventEngine(Engine):
        name = ""

        def step(self, now: float) -> StepOutcome:
            out = super().step(now)
            events: list[BlockStored | BlockRemoved | AllBlocksCleared] = []
            for e in out.kv_events:
                if isinstance(e, kvcache.BlockStored):
                    stored = BlockStored(e.block_hashes, e.parent_block_hash, e.token_ids, 16)
                    events.append(stored)
                elif isinstance(e, kvcache.BlockRemoved):
                    events.append(BlockRemoved(e.block_hashes))
                else:
                    events.append(AllBlocksCleared())
            if events:
                precise.index.apply(self.name, KvEventBatch(now, tuple(events)))
            return out

    for i, replica in enumerate(replicas):
        engine = EventEngine(cfg)
        engine.name = f"replica-{i}"
        replica.engine = engine
    return list(replicas)


def run_cluster(
    workload: str,
    params: dict[str, str],
    qps: float,
    policies: list[str],
    *,
    tmp: Path,
    tokenizer_dir: Path,
    replicas: int = 10,
    duration: float = 60.0,
    seed: int = 0,
    overrides: dict[str, object] | None = None,
) -> list[dict[str, object]]:
    """One stage per policy on the same requests; rows of the figures ``benchmarks.md`` shows."""
    from kvroute_bench.cache_bound import pooled_cache_hit_rate
    from kvroute_bench.cluster import RunConfig, run_stage
    from kvroute_bench.workload import generate, resolve_spec

    overrides = overrides or {}
    spec = resolve_spec(workload, params)
    requests = generate(spec, rate=qps, duration=duration, seed=seed)
    blocks = int(overrides.get("num_gpu_blocks", 27000))  # type: ignore[call-overload]
    oracle = pooled_cache_hit_rate(requests, capacity_blocks=replicas * blocks).hit_rate
    rows: list[dict[str, object]] = []
    for policy in policies:
        router = _cluster_router(policy, tmp, tokenizer_dir, seed, requests)
        engines = _engines(policy, router, replicas, overrides)
        result = run_stage(
            requests,
            engines,  # type: ignore[arg-type]
            router,  # type: ignore[arg-type]
            offered_qps=qps,
            duration=duration,
            config=RunConfig(warmup=0.2 * duration, drain=120.0),
        )
        m = result.metrics
        rows.append(
            {
                "workload": workload,
                "qps": qps,
                "policy": policy,
                "output_tok_s": round(m.output_tok_s),
                "ttft_p50": round(m.ttft_p50, 3),
                "ttft_p90": round(m.ttft_p90, 3),
                "hit_rate": round(m.prefix_hit_rate, 3),
                "oracle_hit_rate": round(oracle, 3),
                "of_oracle": round(m.prefix_hit_rate / oracle, 3) if oracle else None,
                "completed": m.completed,
                "decision_us_p50": round(m.decision_us_p50),
                "wall_s": round(result.wall_seconds, 1),
            }
        )
    return rows


def _print_rows(rows: list[dict[str, object]]) -> None:
    keys = list(rows[0])
    print("\n| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in keys) + " |")


@pytest.mark.slow
def test_cluster_levels_on_shared_prefix(tmp_path: Path, tokenizer_dir: Path) -> None:
    """A short shared-prefix stage (SGLang's shape: 64 groups x 16, 2048 + 128 tokens):
    every prefix level must beat round-robin's hit rate and level 3 must reach 90% of the
    pooled-cache oracle. The full sweep in benchmarks.md uses ``KVROUTE_PREFIX_SWEEP``."""
    import os

    spec = os.environ.get("KVROUTE_PREFIX_SWEEP")
    if spec:  # "workload;k=v,k=v;qps1,qps2;duration" for the documented figures
        workload, raw_params, raw_qps, raw_duration = spec.split(";")
        params = dict(kv.split("=") for kv in raw_params.split(",") if kv)
        policies = os.environ.get(
            "KVROUTE_PREFIX_POLICIES", "round-robin,load-only,level1,level1-pure,level2,level3"
        ).split(",")
        overrides: dict[str, object] = {"max_model_len": 16384}
        for kv in os.environ.get("KVROUTE_PREFIX_ENGINE", "").split(","):
            if kv:
                key, value = kv.split("=")
                overrides[key] = int(value)
        for q in raw_qps.split(","):
            rows = run_cluster(
                workload,
                params,
                float(q),
                policies,
                tmp=tmp_path,
                tokenizer_dir=tokenizer_dir,
                duration=float(raw_duration),
                overrides=overrides,
            )
            _print_rows(rows)
        return
    rows = run_cluster(
        "shared-prefix-sglang",
        {},
        30.0,
        ["round-robin", "level1", "level2", "level3"],
        tmp=tmp_path,
        tokenizer_dir=tokenizer_dir,
        duration=20.0,
    )
    _print_rows(rows)
    by = {r["policy"]: r for r in rows}
    rr_hit = float(by["round-robin"]["hit_rate"])  # type: ignore[arg-type]
    for level in ("level1", "level2", "level3"):
        assert float(by[level]["hit_rate"]) > rr_hit  # type: ignore[arg-type]
    assert float(by["level3"]["of_oracle"]) >= 0.9  # type: ignore[arg-type]
