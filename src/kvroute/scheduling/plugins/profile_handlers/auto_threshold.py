"""``nonCachedTokens: auto``: whether to split, learnt per prompt-length bucket and queue depth.

Sans-IO: :meth:`AutoThreshold.choose` decides, :meth:`AutoThreshold.observe` learns from one
completed request; the decider (``deciders.py``) feeds both.

Rule. Uncached prompt lengths fall in power-of-two buckets ``[2^b, 2^(b+1))``. A request's cost
is its end-to-end seconds per output token (scheduling to completion), which carries both the
hop and transfer a split adds and the decode stalls it removes. Each mode (kept whole, split)
sees a load when it is chosen: kept whole, the waiting queue of the decode pick; split, the
shortest waiting queue among the other endpoints that serve prefill. For each bucket and mode a
line ``cost = a + k * load`` is fitted online (exponentially weighted least squares, weight
:attr:`AutoThreshold.ALPHA` per sample, slope ``k >= 0``). Once both modes of a bucket have
``min_samples`` samples, a request takes the mode whose line predicts the lower cost **at the
loads the two modes show now**; a fraction ``exploration`` takes the other mode so that both
lines stay measured.

Why the load: each mode's cost depends on how many requests take it, since the prefill pool and
the decode pool queue up with their own share. Comparing costs averaged over whatever load
happened made a whole bucket change mode at once, which reversed the comparison; on uniform
prompts (one bucket) the old learner's threshold flipped between two buckets. With the load in
the comparison, a bucket is split while the prefill side's queue is short enough to be cheaper
and kept whole once it is not, so the share that splits settles where the two costs meet; on
mixed lengths the buckets whose verdict is clear at every load behave as a threshold.

With ``charge_stalls`` (the decider's ``autoChargeStalls``, on by default there) a request's
cost also carries :meth:`AutoThreshold.stall_seconds`, the wait its prefill causes the requests
running or waiting where it runs: a request's own latency does not show the decode stalls a
long prefill kept whole inflicts on the other streams of its engine, which is what a split
saves, so without it the two modes cost a request the same at light load.

A bucket not learnt yet borrows from its learnt neighbours (longer prompts gain more from a
split): it splits if a shorter learnt bucket would split now, stays whole if a longer one would
stay whole, and otherwise follows ``initial`` (split iff ``tokens >= initial``).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(slots=True)
class Ewma:
    value: float = 0.0
    n: int = 0

    def add(self, x: float, alpha: float) -> None:
        self.value = x if self.n == 0 else self.value + alpha * (x - self.value)
        self.n += 1


def context(split_queue: float, whole_queue: float) -> int:
    """-1: the prefill side's queue is shorter than the decode pick's; 0: equal; 1: longer."""
    return (split_queue > whole_queue) - (split_queue < whole_queue)


class AutoThreshold:
    """The learner; see the module docstring."""

    ALPHA = 0.1
    MARGIN = 0.02  # split only when it is this much cheaper than kept whole

    def __init__(
        self,
        initial: int,
        exploration: float,
        min_samples: int,
        rng: random.Random,
        *,
        charge_stalls: bool = False,
    ) -> None:
        self.initial = initial
        self.charge_stalls = charge_stalls
        self.prefill_rate = 0.0  # the fastest prefill seen: uncached tokens per second of TTFT
        self.exploration = exploration
        self.min_samples = min_samples
        self.rng = rng
        # (bucket, context, split?) -> EWMA of cost / the bucket's baseline at completion
        self.cost: dict[tuple[int, int, bool], Ewma] = {}
        self.baseline: dict[int, Ewma] = {}  # bucket -> EWMA of every completion's cost

    def stall_seconds(self, tokens: int, others: float, ttft: float | None) -> float:
        """With ``charge_stalls`` (``autoChargeStalls``), what a request's prefill costs the
        ``others`` requests running or waiting where it runs: each waits about as long as the
        prefill computes, estimated as ``tokens`` at the fastest prefill rate seen
        (``tokens / ttft``, the upper envelope, so queueing in a TTFT does not inflate it).
        Added to the request's own seconds before dividing by its output tokens."""
        if ttft is not None and ttft > 0:
            self.prefill_rate = max(self.prefill_rate, tokens / ttft)
        if not self.charge_stalls or self.prefill_rate <= 0:
            return 0.0
        return others * tokens / self.prefill_rate

    @staticmethod
    def bucket(tokens: int) -> int:
        return max(0, int(math.log2(max(1, tokens))))

    def verdict(self, b: int, ctx: int) -> bool | None:
        """Split cheaper than whole in bucket ``b`` and context ``ctx``; None if not learnt."""
        whole, split = self.cost.get((b, ctx, False)), self.cost.get((b, ctx, True))
        m = self.min_samples
        if whole is None or split is None or whole.n < m or split.n < m:
            return None
        return split.value < whole.value * (1.0 - self.MARGIN)

    def prefers_split(self, tokens: int, ctx: int = 0) -> bool:
        """The mode this learner wants for ``tokens`` uncached tokens in ``ctx``, before
        exploration."""
        b = self.bucket(tokens)
        verdict = self.verdict(b, ctx)
        if verdict is not None:
            return verdict
        learnt = {c for c, x, _ in self.cost if x == ctx}
        if any(self.verdict(c, ctx) for c in learnt if c < b):
            return True
        if any(self.verdict(c, ctx) is False for c in learnt if c > b):
            return False
        return tokens >= self.initial and ctx <= 0

    def choose(self, tokens: int, split_queue: float = 0.0, whole_queue: float = 0.0) -> bool:
        wanted = self.prefers_split(tokens, context(split_queue, whole_queue))
        if self.exploration > 0 and self.rng.random() < self.exploration:
            return not wanted
        return wanted

    def observe(
        self,
        tokens: int,
        disaggregated: bool,
        cost: float,
        split_queue: float = 0.0,
        whole_queue: float = 0.0,
    ) -> None:
        b = self.bucket(tokens)
        base = self.baseline.setdefault(b, Ewma())
        ratio = cost / base.value if base.n > 0 and base.value > 0 else 1.0
        base.add(cost, self.ALPHA)
        key = (b, context(split_queue, whole_queue), disaggregated)
        self.cost.setdefault(key, Ewma()).add(ratio, self.ALPHA)

    @property
    def threshold(self) -> int:
        """For display: with equal queues on both sides, the lower edge of the lowest bucket
        from which every learnt bucket is cheaper split; above the top one if that one is
        cheaper whole; ``initial`` while nothing is learnt."""
        verdicts = {
            b: v for b, x, _ in self.cost if x == 0 and (v := self.verdict(b, 0)) is not None
        }
        if not verdicts:
            return self.initial
        threshold: int = 1 << (max(verdicts) + 1)
        for b in sorted(verdicts, reverse=True):
            if not verdicts[b]:
                break
            threshold = 1 << b
        return threshold
