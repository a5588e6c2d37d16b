"""Per-request cost of each prefix-routing level, and index memory at 100k blocks per server.

Run::

    .venv/bin/pytest -q -m bench --benchmark-enable tests/bench/test_prefix_bench.py -s

Each timed call is one whole request cycle of the plugin as the director runs it
(``prepare_data`` + ``score`` + ``pre_request``) over 10 endpoints whose index already holds
the request's prefix on one server and 100k unrelated blocks on each (upstream-sized state).
Prompts of 4 KB and 32 KB of English-like text. Level 2/3 use a real byte-level BPE tokenizer
(``tokenizers``, trained here on the same kind of text, ~3.5 characters per token) with its
cache disabled ("miss", every prompt new) or warm ("hit", the same prompt again). The memory
tests print bytes per cached block (tracemalloc) and assert a generous bound so a regression
that doubles it is caught; they are deterministic, not timings.
"""

from __future__ import annotations

import random
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from kvroute.datalayer.kvevents import BlockStored, KvEventBatch
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
    assert plugin.score(CycleState(0.0), request, endpoints)["e3"] == 1.0


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


@pytest.mark.parametrize("servers", [1, 4], ids=["1-server", "4-servers"])
def test_approximate_index_memory(servers: int) -> None:
    def build() -> PrefixIndex:
        index = PrefixIndex(BLOCKS_PER_SERVER)
        for s in range(servers):
            base = (s + 1) << 40
            index.add(f"e{s}", range(base, base + BLOCKS_PER_SERVER))
        return index

    used, index = _measure(build)
    per_block = used / (servers * BLOCKS_PER_SERVER)
    print(
        f"\napproximate index: {servers} x {BLOCKS_PER_SERVER} blocks -> "
        f"{used / 2**20:.1f} MiB, {per_block:.0f} B/block"
    )
    assert isinstance(index, PrefixIndex)
    assert index.size("e0") == BLOCKS_PER_SERVER
    assert per_block < 260


def test_precise_index_memory() -> None:
    used, index = _measure(lambda: _fill(PreciseIndex()))
    per_block = used / BLOCKS_PER_SERVER
    print(
        f"\nprecise index: 1 x {BLOCKS_PER_SERVER} blocks -> "
        f"{used / 2**20:.1f} MiB, {per_block:.0f} B/block"
    )
    assert isinstance(index, PreciseIndex)
    assert index.size("e0") == BLOCKS_PER_SERVER
    assert per_block < 400


def _fill(index: PreciseIndex) -> PreciseIndex:
    _fill_precise(index, ["e0"])
    return index
