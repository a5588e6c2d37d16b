"""Per-endpoint online models of TTFT and TPOT, from what the EPP sees of its own traffic.

Why this model (and not a sidecar's gradient-boosted trees): the quantities that set TTFT on a
vLLM-like server are few and known (``docs/`` and the reference ``vllm-performance-model.md``):
the prefill work ahead of the request and its own uncached tokens, processed in budget-sized
chunks at a per-step cost that grows with the decode batch. TTFT is close to linear in them, and
the coefficients are what differ between servers (accelerator, model, TP degree). So each
endpoint gets a linear model fitted by recursive least squares with forgetting
(:mod:`~kvroute.scheduling.plugins.latency.rls`): microseconds per update, a handful of
multiply-adds per prediction, and no configuration for servers of different speeds -- the
coefficients are learned per endpoint.

TTFT features at send time (seconds are the unit of the target)::

    x_ttft = [1, u / 1e3, B / 1e3, q, r / 10]

* ``u``: this request's uncached prompt tokens on the endpoint = prompt tokens (text / 4) x
  (1 - prefix-match fraction from ``prefix-cache-scorer``, when one is declared);
* ``B``: the EPP's own prefill backlog on the endpoint: uncached tokens of requests it sent
  there whose predicted first token is still in the future (a lazily expired heap);
* ``q``: waiting requests (last scrape + requests sent since it); ``r``: running requests
  (max of the scrape and the EPP's in-flight count).

TPOT features: ``x_tpot = [1, r / 10, T / 1e4, kv]`` with ``T`` the EPP's in-flight tokens
(``EndpointLoad.inflight_tokens``) and ``kv`` the scraped KV-cache use.

Warm-up: a pool-wide model learns from every response and serves an endpoint until that
endpoint has ``warmup`` observations of its own (8 by default: well under a second at tens of
requests per second). Before the pool model has ``warmup`` observations there is no prediction
(the latency scorer then falls back to a KV/queue/prefix composite, as upstream does).

Memory per endpoint: two 5x5 / 4x4 covariance matrices and coefficient vectors (~60 floats,
~2 KB as Python lists), plus one heap entry per in-flight request.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from kvroute.datastore.endpoint import Endpoint
from kvroute.scheduling.plugins.latency.rls import Rls

TTFT_DIM = 5
TPOT_DIM = 4
DEFAULT_WARMUP = 8
COLD_PREFILL_S = 0.1  # backlog residence of a request sent before any prediction existed
ERROR_WINDOW = 2000


@dataclass(slots=True)
class EndpointModel:
    ttft: Rls
    tpot: Rls
    backlog: float = 0.0  # uncached prompt tokens predicted still in prefill
    heap: list[tuple[float, float]] = field(default_factory=list)  # (leaves_at, tokens)

    def expire(self, now: float) -> float:
        heap = self.heap
        while heap and heap[0][0] <= now:
            self.backlog -= heapq.heappop(heap)[1]
        if not heap:
            self.backlog = 0.0
        return self.backlog


class LatencyPredictor:
    """The models of every endpoint plus the pool-wide fallback; no I/O, no clock of its own."""

    def __init__(self, *, lam: float = 0.995, warmup: int = DEFAULT_WARMUP) -> None:
        self.lam = lam
        self.warmup = warmup
        self.pool = EndpointModel(Rls(TTFT_DIM, lam=lam), Rls(TPOT_DIM, lam=lam))
        self.models: dict[str, EndpointModel] = {}
        self.ttft_rel_errors: deque[float] = deque(maxlen=ERROR_WINDOW)  # |pred - obs| / obs

    def model(self, name: str) -> EndpointModel:
        m = self.models.get(name)
        if m is None:
            m = self.models[name] = EndpointModel(
                Rls(TTFT_DIM, lam=self.lam), Rls(TPOT_DIM, lam=self.lam)
            )
        return m

    def forget(self, name: str) -> None:
        self.models.pop(name, None)

    @property
    def warm(self) -> bool:
        return self.pool.ttft.n >= self.warmup

    def ttft_features(
        self, endpoint: Endpoint, uncached_tokens: float, now: float
    ) -> tuple[float, ...]:
        m = endpoint.metrics
        load = endpoint.load
        model = self.models.get(endpoint.name)
        backlog = 0.0
        if model is not None and model.heap:
            backlog = model.expire(now)
        running = m.running_queue_size if m.running_queue_size > load.inflight else load.inflight
        return (
            1.0,
            uncached_tokens / 1e3,
            backlog / 1e3,
            float(m.waiting_queue_size + load.sent_since_scrape),
            running / 10.0,
        )

    @staticmethod
    def tpot_features(endpoint: Endpoint) -> tuple[float, ...]:
        m = endpoint.metrics
        load = endpoint.load
        running = m.running_queue_size if m.running_queue_size > load.inflight else load.inflight
        return (1.0, running / 10.0, load.inflight_tokens / 1e4, m.kv_cache_usage)

    def predict(
        self, name: str, x_ttft: tuple[float, ...], x_tpot: tuple[float, ...]
    ) -> tuple[float, float] | None:
        """(TTFT s, TPOT s) for ``name``, or None while the pool model is cold."""
        warmup = self.warmup
        m = self.models.get(name)
        if m is not None and m.ttft.n >= warmup:
            t = m.ttft.theta
        elif self.pool.ttft.n >= warmup:
            t = self.pool.ttft.theta
        else:
            return None
        # unrolled dot products (TTFT_DIM = 5, TPOT_DIM = 4): the hot path, once per candidate
        ttft = t[0] + t[1] * x_ttft[1] + t[2] * x_ttft[2] + t[3] * x_ttft[3] + t[4] * x_ttft[4]
        if m is not None and m.tpot.n >= warmup:
            p = m.tpot.theta
        elif self.pool.tpot.n >= warmup:
            p = self.pool.tpot.theta
        else:
            return (ttft if ttft > 0.0 else 0.0, 0.0)
        tpot = p[0] + p[1] * x_tpot[1] + p[2] * x_tpot[2] + p[3] * x_tpot[3]
        return (ttft if ttft > 0.0 else 0.0, tpot if tpot > 0.0 else 0.0)

    def predict_many(
        self,
        endpoints: Sequence[Endpoint],
        prompt_tokens: float,
        matched: Mapping[str, int],
        total_blocks: int,
        now: float,
    ) -> dict[str, tuple[float, float]] | None:
        """(TTFT s, TPOT s) for every candidate, None while the pool model is cold.

        The same features as :meth:`ttft_features` / :meth:`tpot_features`, computed inline
        without building them (the scheduling hot path: one loop, no objects per candidate);
        the uncached tokens are ``prompt_tokens * (1 - matched[e] / total_blocks)``.
        """
        warmup = self.warmup
        if self.pool.ttft.n < warmup:
            return None
        pool_t = self.pool.ttft.theta
        pool_p = self.pool.tpot.theta if self.pool.tpot.n >= warmup else None
        models = self.models
        per_block = prompt_tokens / total_blocks if total_blocks else 0.0
        out: dict[str, tuple[float, float]] = {}
        for e in endpoints:
            name = e.name
            m = e.metrics
            load = e.load
            model = models.get(name)
            backlog = 0.0
            t = pool_t
            p = pool_p
            if model is not None:
                if model.heap:
                    backlog = model.expire(now)
                if model.ttft.n >= warmup:
                    t = model.ttft.theta
                if model.tpot.n >= warmup:
                    p = model.tpot.theta
            run = m.running_queue_size if m.running_queue_size > load.inflight else load.inflight
            u = prompt_tokens - per_block * matched.get(name, 0)
            ttft = (
                t[0]
                + t[1] * u / 1e3
                + t[2] * backlog / 1e3
                + t[3] * (m.waiting_queue_size + load.sent_since_scrape)
                + t[4] * run / 10.0
            )
            if p is None:
                tpot = 0.0
            else:
                tpot = (
                    p[0]
                    + p[1] * run / 10.0
                    + p[2] * load.inflight_tokens / 1e4
                    + p[3] * m.kv_cache_usage
                )
            out[name] = (ttft if ttft > 0.0 else 0.0, tpot if tpot > 0.0 else 0.0)
        return out

    def sent(
        self, name: str, uncached_tokens: float, predicted_ttft: float | None, now: float
    ) -> None:
        """A request went to ``name``: its prompt joins the endpoint's prefill backlog."""
        m = self.model(name)
        leaves = now + (predicted_ttft if predicted_ttft is not None else COLD_PREFILL_S)
        heapq.heappush(m.heap, (leaves, uncached_tokens))
        m.backlog += uncached_tokens

    def observe(
        self,
        name: str,
        x_ttft: tuple[float, ...],
        ttft: float | None,
        x_tpot: tuple[float, ...],
        tpot: float | None,
        predicted_ttft: float | None = None,
    ) -> None:
        """Learn from one finished request (either target may be unknown)."""
        m = self.model(name)
        if ttft is not None and ttft >= 0.0:
            if predicted_ttft is not None and ttft > 0.0:
                self.ttft_rel_errors.append(abs(predicted_ttft - ttft) / ttft)
            m.ttft.update(x_ttft, ttft)
            self.pool.ttft.update(x_ttft, ttft)
        if tpot is not None and tpot >= 0.0:
            m.tpot.update(x_tpot, tpot)
            self.pool.tpot.update(x_tpot, tpot)

    def median_ttft_error(self) -> float | None:
        """Median |predicted - observed| / observed TTFT over the recent window."""
        if not self.ttft_rel_errors:
            return None
        s = sorted(self.ttft_rel_errors)
        return s[len(s) // 2]
