"""An llm-d-router "token-aware routing" baseline, written from its published description.

Source: ``llm-d-router.md`` §4.3 (the llm-d guide's optimized baseline, "sticky until
saturated"), §3 (plugin parameters and defaults) and §8 (in-flight accounting, prefix hashing);
no code was copied, and nothing of kvroute's plugins is used. The profile is
``prefix-cache-affinity-filter`` -> ``token-load-scorer`` -> ``max-score-picker``, fed by
``approx-prefix-cache-producer`` and ``inflight-load-producer``:

- **Approximate prefix index** (per endpoint, an LRU of ``lru_capacity`` block hashes, 31250):
  the prompt's token ids in blocks of ``block_size`` tokens (16 configured, effective minimum
  64), trailing partial block kept, chained ``h_i = H(h_{i-1}, block_i)`` from ``h_0 =
  H(model)``, at most ``max_prefix_tokens`` (the guide's 40960) and 2048 blocks. An endpoint's
  prefix score is its consecutive matched blocks / the request's blocks. The chosen endpoint
  records the request's blocks (PreRequest). We hash the real token ids, as the ``vllm`` token
  producer would give them, not the 4-bytes-per-token estimate.
- **prefix-cache-affinity-filter**: keep the endpoints whose score is >= ``affinity_threshold``
  (0.80), else all. TTFT gate (``ttftSource: prefillThroughput``): an endpoint's TTFT is its
  in-flight tokens / ``peak_prefill_throughput`` (15928 tok/s); stickiness is dropped (all
  endpoints kept) if the best sticky TTFT exceeds the best other's by more than
  ``max_ttft_penalty_ms`` (18000). ``explorationProbability`` 0.
- **In-flight tokens** (``inflight-load-producer``): at send the endpoint is charged the
  request's **uncached** prompt tokens (prompt minus its matched blocks there); they are released
  at the first streamed token. ``addEstimatedOutputTokens`` is off by default, so decode adds
  nothing; with ``add_estimated_output_tokens`` it charges ``round(prompt * output_ratio)``
  (1.5) until the end of the stream (the client's ``max_tokens`` cap is the output length).
- **token-load-scorer**: ``1 - min(1, inflight_tokens / queue_threshold_tokens)`` (4194304);
  the max-score picker breaks ties at random.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from dataclasses import dataclass

from kvroute_bench.pool import PoolView
from kvroute_bench.workload import BenchRequest


def prefix_blocks(
    tokens: tuple[int, ...], model: str, block_size: int, max_blocks: int
) -> list[int]:
    """Chained hashes of ``tokens`` in ``block_size`` blocks, trailing partial block kept."""
    out: list[int] = []
    h = hash(("model", model))
    for start in range(0, len(tokens), block_size):
        if len(out) >= max_blocks:
            break
        h = hash((h, tokens[start : start + block_size]))
        out.append(h)
    return out


@dataclass(slots=True)
class _Charge:
    replica: int
    prompt_tokens: int
    output_tokens: int
    prompt_released: bool = False


class LlmdTokenAwareRouter:
    """llm-d-router's token-aware profile (see the module docstring)."""

    name = "llm-d-token-aware"

    def __init__(
        self,
        seed: int,
        *,
        block_size: int = 64,
        lru_capacity: int = 31250,
        max_prefix_tokens: int = 40960,
        max_prefix_blocks: int = 2048,
        affinity_threshold: float = 0.80,
        max_ttft_penalty_ms: float = 18000.0,
        peak_prefill_throughput: float = 15928.0,
        queue_threshold_tokens: int = 4194304,
        add_estimated_output_tokens: bool = False,
        output_ratio: float = 1.5,
    ) -> None:
        self._rng = random.Random(seed)
        self.block_size = block_size
        self.lru_capacity = lru_capacity
        self.max_blocks = min(max_prefix_blocks, max(1, max_prefix_tokens // block_size))
        self.affinity_threshold = affinity_threshold
        self.max_ttft_penalty_ms = max_ttft_penalty_ms
        self.peak_prefill_throughput = peak_prefill_throughput
        self.queue_threshold_tokens = queue_threshold_tokens
        self.add_estimated_output_tokens = add_estimated_output_tokens
        self.output_ratio = output_ratio
        self.index: list[OrderedDict[int, None]] = []
        self.inflight_tokens: list[int] = []
        self._charges: dict[str, _Charge] = {}

    def _grow(self, n: int) -> None:
        while len(self.index) < n:
            self.index.append(OrderedDict())
            self.inflight_tokens.append(0)

    def matched_blocks(self, replica: int, blocks: list[int]) -> int:
        lru = self.index[replica]
        k = 0
        for h in blocks:
            if h not in lru:
                break
            k += 1
        return k

    def candidates(self, scores: list[float]) -> list[int]:
        """The prefix-cache-affinity filter: sticky endpoints unless the TTFT gate opens."""
        n = len(scores)
        sticky = [i for i in range(n) if scores[i] >= self.affinity_threshold]
        if not sticky or len(sticky) == n:
            return list(range(n))
        others = [i for i in range(n) if scores[i] < self.affinity_threshold]
        ttft = [t / self.peak_prefill_throughput * 1000.0 for t in self.inflight_tokens[:n]]
        best_sticky = min(ttft[i] for i in sticky)
        best_other = min(ttft[i] for i in others)
        if self.max_ttft_penalty_ms > 0 and best_sticky - best_other > self.max_ttft_penalty_ms:
            return list(range(n))
        return sticky

    def pick(self, request: BenchRequest, pool: PoolView, now: float) -> int | None:
        n = len(pool)
        self._grow(n)
        blocks = prefix_blocks(
            request.prompt, request.adapter or "", self.block_size, self.max_blocks
        )
        matched = [self.matched_blocks(i, blocks) for i in range(n)]
        total = max(1, len(blocks))
        cands = self.candidates([m / total for m in matched])
        # token-load-scorer + max-score picker (random among equal scores)
        cap = self.queue_threshold_tokens
        score = {i: 1.0 - min(1.0, self.inflight_tokens[i] / cap) for i in cands}
        top = max(score.values())
        best = [i for i in cands if score[i] == top]
        choice = best[0] if len(best) == 1 else self._rng.choice(best)
        # PreRequest: record the blocks, charge the uncached prompt (and estimated output)
        lru = self.index[choice]
        for h in blocks:
            lru[h] = None
            lru.move_to_end(h)
        while len(lru) > self.lru_capacity:
            lru.popitem(last=False)
        uncached = max(0, request.prompt_len - matched[choice] * self.block_size)
        out = 0
        if self.add_estimated_output_tokens:
            out = min(round(request.prompt_len * self.output_ratio), request.output_len)
        self.inflight_tokens[choice] += uncached + out
        self._charges[request.request_id] = _Charge(choice, uncached, out)
        return choice

    def on_first_token(self, request: BenchRequest, replica: int, now: float) -> None:
        charge = self._charges.get(request.request_id)
        if charge is not None and not charge.prompt_released:
            charge.prompt_released = True
            self.inflight_tokens[charge.replica] -= charge.prompt_tokens

    def on_complete(self, request: BenchRequest, replica: int, now: float) -> None:
        self.on_first_token(request, replica, now)
        charge = self._charges.pop(request.request_id, None)
        if charge is not None:
            self.inflight_tokens[charge.replica] -= charge.output_tokens
