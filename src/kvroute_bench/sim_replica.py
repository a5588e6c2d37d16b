"""Replicas made of ``kvroute_sim`` engines, and the pooled-replica bound built from one.

:class:`SimReplica` adapts a :class:`kvroute_sim.engine.Engine` (the same sans-IO engine the
``kvroute sim`` servers run in real time) to the harness's :class:`~kvroute_bench.pool.
ReplicaEngine` seam: it converts workload requests, turns step outcomes into ids, renders a scrape
as kvroute's ``EndpointMetrics`` (what the EPP's vLLM metric mapping would produce from
``/metrics``), and exposes true state to the oracle.

:func:`pooled_config` builds the resource-pooling bound (performance-model reference §5, oracle
2): ONE engine with the whole pool's capacity — Nx KV blocks, Nx ``max_num_seqs``, Nx token
budget, Nx LoRA slots — whose step costs what one replica's step would cost with 1/N of the batch
(the linear-layer table is stretched Nx along the token axis and the per-sequence, per-context
and attention coefficients are divided by N; the fixed per-step cost is unchanged). That is an
ideal data-parallel pool with perfect balance at every step and one shared prefix cache, which no
router over N separate replicas can beat. Approximation: it runs the N shares in lockstep, so one
long prefill delays the whole pooled batch, where a real replica would delay only its own; at
the loads we report this makes the bound slightly loose (optimistic for routers), never wrong in
direction for queueing-dominated metrics.
"""

from __future__ import annotations

from kvroute.datastore.endpoint import EndpointMetrics
from kvroute_bench.pool import EngineTotals, StepCosts, StepEvents, TrueState
from kvroute_bench.workload import BenchRequest
from kvroute_sim.config import EngineConfig, engine_profile
from kvroute_sim.engine import Engine, RequestRejected, SimRequest
from kvroute_sim.steptime import StepTimeModel
from kvroute_sim.tokenizer import block_hashes


class SimReplica:
    """One simulated vLLM replica in virtual time."""

    __slots__ = ("_inflight", "config", "costs", "engine")

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.engine = Engine(config)
        self._inflight: dict[str, SimRequest] = {}
        self.costs = step_costs(config)  # this replica's own cost model, for the oracle

    def add(self, request: BenchRequest, now: float) -> bool:
        sim = SimRequest(
            request.request_id,
            prompt_token_ids=request.prompt,
            max_tokens=request.output_len,
            lora=request.adapter,
            arrival_time=now,
        )
        try:
            self.engine.add_request(sim)
        except RequestRejected:
            return False
        self._inflight[request.request_id] = sim
        return True

    def next_step_time(self, now: float) -> float | None:
        return self.engine.next_step_time(now)

    def step(self, now: float) -> StepEvents:
        out = self.engine.step(now)
        if not out.emitted:
            return StepEvents(duration=out.duration)
        finished = tuple((r.request_id, r.num_output_tokens) for r in out.finished)
        for rid, _n in finished:
            self._inflight.pop(rid, None)
        return StepEvents(
            duration=out.duration,
            first_token=tuple(r.request_id for r in out.first_token),
            finished=finished,
            output_tokens=len(out.emitted),
        )

    def snapshot(self, now: float) -> EndpointMetrics:
        st = self.engine.stats()
        return EndpointMetrics(
            waiting_queue_size=st.num_waiting,
            running_queue_size=st.num_running,
            kv_cache_usage=st.kv_usage,
            active_models=frozenset(st.running_loras),
            waiting_models=frozenset(st.waiting_loras),
            max_active_models=st.max_loras,
            cache_block_size=st.block_size,
            cache_num_blocks=st.num_gpu_blocks,
            updated_at=now,
        )

    def totals(self) -> EngineTotals:
        e = self.engine
        return EngineTotals(
            prefix_queries=e.prefix_cache_queries,
            prefix_hits=e.prefix_cache_hits,
            preemptions=e.num_preemptions,
            adapter_loads=e.num_adapter_loads,
        )

    def true_state(self, request: BenchRequest) -> TrueState:
        cfg = self.config
        waiting_prefill = 0
        running_ctx = 0
        for r in self._inflight.values():
            left = r.num_prompt_tokens - r.num_computed_tokens
            if left > 0:
                waiting_prefill += left
            if r.num_computed_tokens > 0:
                running_ctx += r.num_computed_tokens
        cached = 0
        if cfg.prefix_caching:
            hashes = block_hashes(request.prompt, cfg.block_size, request.adapter)
            hit, _ev = self.engine.pool.match(hashes, (request.prompt_len - 1) // cfg.block_size)
            cached = hit * cfg.block_size
        running_loras = set(self.engine.stats().running_loras)
        adapter = request.adapter
        ready = adapter is None or adapter in running_loras or len(running_loras) < cfg.max_loras
        # GPU residency is engine-internal; an adapter in the running batch is certainly loaded.
        gpu = getattr(self.engine, "_gpu_loras", running_loras)
        return TrueState(
            waiting=len(self._inflight) - self.engine.num_running,  # queued + in API overhead
            running=self.engine.num_running,
            waiting_prefill_tokens=waiting_prefill,
            running_context_tokens=running_ctx,
            free_blocks=self.engine.pool.num_free,
            cached_prompt_tokens=cached,
            adapter_ready=ready,
            adapter_resident=adapter is None or adapter in gpu,
        )


def replica_config(profile: str, overrides: dict[str, object] | None = None) -> EngineConfig:
    return engine_profile(profile, **(overrides or {}))


def pooled_config(cfg: EngineConfig, n: int) -> EngineConfig:
    """One engine with ``n`` replicas' capacity and ``n``x per-step throughput (see module)."""
    return cfg.model_copy(
        update={
            "max_num_seqs": cfg.max_num_seqs * n,
            "max_num_batched_tokens": cfg.max_num_batched_tokens * n,
            "num_gpu_blocks": cfg.num_gpu_blocks * n,
            "max_loras": cfg.max_loras * n,
            "max_cpu_loras": cfg.max_cpu_loras * n,
            "linear_table": tuple((x * n, y) for x, y in cfg.linear_table),
            "c_seq": cfg.c_seq / n,
            "c_kv": cfg.c_kv / n,
            "c_att": cfg.c_att / n,
            "cudagraph_max_tokens": cfg.cudagraph_max_tokens * n,
            "lora_step_overhead": cfg.lora_step_overhead / n,
        }
    )


def step_costs(cfg: EngineConfig) -> StepCosts:
    """The oracle's view of the engine's cost model: its exact step-time function."""
    model = StepTimeModel(cfg)

    def step_time(n_tokens: int, n_seqs: int, decode_ctx: int) -> float:
        return model.duration(n_tokens, n_seqs, decode_ctx, 0.0, 0, 0.0)

    return StepCosts(
        step_time=step_time,
        max_batched_tokens=cfg.max_num_batched_tokens,
        max_num_seqs=cfg.max_num_seqs,
        block_size=cfg.block_size,
        adapter_load=cfg.lora_cold_load_s * cfg.time_scale,
    )
