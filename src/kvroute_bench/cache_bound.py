"""The pooled-cache oracle for prefix-cache hit rate (performance-model reference §5, oracle 1).

Replays a workload's prompts, in arrival order, through ONE global LRU prefix cache whose capacity
is the pool's total KV blocks (or unbounded, for the absolute ceiling). Block keys chain like
vLLM's: key_i = hash(key_{i-1}, the 16 token ids of block i), rooted at the LoRA adapter; only
full blocks count, and the last prompt token is never a hit (vLLM always recomputes it).

No router can beat this hit rate: it is what a cache that every replica shared would achieve, and
it ignores that running requests' own blocks (prompt and decode) also occupy the cache, which makes
the bounded figure optimistic (still an upper bound).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from kvroute_bench.workload import BenchRequest


@dataclass(frozen=True, slots=True)
class CacheBound:
    queries: int  # prompt tokens looked up
    hits: int  # prompt tokens that would have been found cached

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0


def block_keys(request: BenchRequest, block_size: int) -> list[int]:
    """Chained keys of the full blocks of ``prompt[:-1]`` (the cacheable part)."""
    tokens = request.prompt
    usable = (len(tokens) - 1) // block_size
    key = hash(("lora", request.adapter))
    keys = []
    for b in range(usable):
        key = hash((key, tokens[b * block_size : (b + 1) * block_size]))
        keys.append(key)
    return keys


def pooled_cache_hit_rate(
    requests: Iterable[BenchRequest], *, capacity_blocks: int | None, block_size: int = 16
) -> CacheBound:
    """Token-weighted prefix hit rate of one shared LRU cache (``None`` = unbounded)."""
    lru: OrderedDict[int, None] = OrderedDict()
    queries = hits = 0
    for r in requests:
        keys = block_keys(r, block_size)
        queries += r.prompt_len
        matched = 0
        for k in keys:
            if k not in lru:
                break
            matched += 1
        hits += matched * block_size
        # Touch tail blocks first so a prompt's head is the most recently used (vLLM frees a
        # request's blocks in reverse order, so tails are evicted before the shared heads).
        for k in reversed(keys):
            if k in lru:
                lru.move_to_end(k)
            else:
                lru[k] = None
        if capacity_blocks is not None:
            while len(lru) > capacity_blocks:
                lru.popitem(last=False)
    return CacheBound(queries, hits)
