"""The step-time model: how long one engine step takes for what it scheduled.

Pure arithmetic, split from the scheduler so calibration can evaluate it alone. The formula is
documented in ``config.py`` and comes from ``vllm-performance-model.md`` §2.3.
"""

from __future__ import annotations

from bisect import bisect_right

from kvroute_sim.config import EngineConfig


class StepTimeModel:
    """``duration(...)`` for one step; the linear-layer table is pre-split for bisection."""

    __slots__ = (
        "_slopes",
        "_xs",
        "_ys",
        "c_att",
        "c_kv",
        "c_seq",
        "eager_overhead",
        "graph_max",
        "lora_k",
        "scale",
        "t_fix",
    )

    def __init__(self, cfg: EngineConfig) -> None:
        self._xs = [float(x) for x, _ in cfg.linear_table]
        self._ys = [float(y) for _, y in cfg.linear_table]
        self._slopes = [
            (self._ys[i + 1] - self._ys[i]) / (self._xs[i + 1] - self._xs[i])
            for i in range(len(self._xs) - 1)
        ]
        self.t_fix = cfg.t_fix
        self.c_seq = cfg.c_seq
        self.c_kv = cfg.c_kv
        self.c_att = cfg.c_att
        self.graph_max = cfg.cudagraph_max_tokens
        self.eager_overhead = cfg.eager_overhead
        self.lora_k = cfg.lora_step_overhead
        self.scale = cfg.time_scale

    def linear(self, n_tokens: int) -> float:
        """``T_lin(N)``: linear layers over ``N`` tokens, interpolated in the table."""
        xs = self._xs
        if n_tokens <= xs[0]:
            return self._ys[0]
        i = bisect_right(xs, n_tokens) - 1
        if i >= len(self._slopes):
            i = len(self._slopes) - 1
        return self._ys[i] + self._slopes[i] * (n_tokens - xs[i])

    def duration(
        self,
        n_tokens: int,
        n_seqs: int,
        decode_ctx: int,
        prefill_att: float,
        n_adapters: int,
        lora_load: float,
    ) -> float:
        """Seconds for a step of ``n_tokens`` over ``n_seqs`` sequences.

        ``decode_ctx`` sums the context length of each decoding sequence; ``prefill_att`` sums
        ``n*(ctx + n/2)`` over prefill chunks; ``lora_load`` is adapter-load time charged now.
        """
        t = (
            self.linear(n_tokens)
            + self.t_fix
            + self.c_seq * n_seqs
            + self.c_kv * decode_ctx
            + self.c_att * prefill_att
        )
        if n_tokens > self.graph_max:
            t += self.eager_overhead
        if n_adapters:
            t *= 1.0 + self.lora_k * n_adapters
        return (t + lora_load) * self.scale
