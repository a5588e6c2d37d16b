"""The sans-IO engine: vLLM V1's scheduler step by step, with no clock, sockets or sleeping.

A driver owns time. It adds requests whenever they arrive and calls ``step(now)`` when the
engine asks (``next_step_time``); each call schedules one batch, returns how long it takes and
what happened at its end. ``VirtualServer`` (virtual time) and ``RealtimeEngine`` (asyncio) are
the two drivers; both give identical timings for the same arrivals.

API::

    engine = Engine(EngineConfig(...))          # or Engine(engine_profile("tiny"))
    engine.add_request(SimRequest("r1", prompt_token_ids=[...], max_tokens=64,
                                  lora=None, arrival_time=t))
    t = engine.next_step_time(now)              # None = idle until a request arrives
    out = engine.step(t)                        # StepOutcome
    out.start, out.end, out.duration            # end = start + duration
    out.emitted        # requests that got one new token at out.end (first tokens included)
    out.first_token    # requests whose first token came at out.end
    out.finished       # requests finished at out.end (also in emitted)
    out.preempted      # requests preempted (recompute) in this step
    out.kv_events      # BlockStored/BlockRemoved/AllBlocksCleared, if config.kv_events
    engine.abort(request_id); engine.stats() -> EngineStats; engine.has_work()

A ``SimRequest`` is mutable and the engine fills its progress fields in place (no per-token
objects): ``num_output_tokens``, ``num_cached_tokens``, ``first_token_time``,
``prev_token_time``/``last_token_time`` (the two latest token times, for ITL), ``finish_time``,
``num_preemptions``, ``status``.

Semantics (``vllm-performance-model.md`` §2.1-2.2): a request becomes schedulable at
``arrival_time + api_overhead_s``. Each step serves running requests first (oldest first: one
decode token, or the next prefill chunk), preempting the newest running request when a block
cannot be allocated; then, if nothing was preempted, waiting requests FCFS while
``max_num_seqs``, the token budget and the KV pool allow (head-of-line: the first that cannot be
allocated stops admission; one whose adapter would exceed ``max_loras`` is skipped). A request
whose computed tokens reach its total emits one token at the step's end, so the prefill step
produces the first token. Prefix hits (full 16-token blocks, never the last prompt token) skip
prefill. Output blocks are hashed too when the request carries its output token ids.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from kvroute_sim.config import EngineConfig
from kvroute_sim.kvcache import BlockPool, BlockStored, KVEvent
from kvroute_sim.steptime import StepTimeModel
from kvroute_sim.tokenizer import ROOT_HASH, block_hashes, hash_block
from kvroute_sim.vision import EncoderCache, MediaSpan

PENDING, WAITING, RUNNING, FINISHED, ABORTED = 0, 1, 2, 3, 4
_NO_MORE_BLOCKS = 1 << 62  # ``_n_hashed`` once a request has no further hashable blocks


class RequestRejected(ValueError):
    """The request can never run on this engine (too long for the model or the budget)."""


@dataclass(slots=True, eq=False)
class SimRequest:
    """One generation request; the engine updates the progress fields in place.

    Give ``prompt_token_ids``, or (for cheap large simulations) ``num_prompt_tokens`` plus
    optional ``prompt_block_hashes`` (chained hashes of the full prompt blocks, e.g. from
    ``tokenizer.block_hashes``). ``output_token_ids`` (optional) lets the engine hash generated
    blocks so a later turn that repeats the answer hits the cache.
    """

    request_id: str
    prompt_token_ids: Sequence[int] | None = None
    max_tokens: int = 16
    lora: str | None = None
    arrival_time: float = 0.0
    num_prompt_tokens: int = 0
    prompt_block_hashes: Sequence[int] | None = None
    output_token_ids: Sequence[int] | None = None
    # P/D: the prompt's KV arrives from a prefill server (all but the last prompt token), after
    # ``transfer_s`` (seconds, scaled by ``time_scale`` like every other time).
    remote_kv: bool = False
    transfer_s: float = 0.0
    # Vision (kvroute_sim.vision): the prompt's media items; their encoder time is added to
    # the step that first schedules the request, unless the server's encoder cache has them.
    media: Sequence[MediaSpan] = ()
    # --- progress, written by the engine ---
    status: int = PENDING
    num_output_tokens: int = 0
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0
    num_preemptions: int = 0
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    prev_token_time: float | None = None
    last_token_time: float | None = None
    finish_time: float | None = None
    # --- engine internals ---
    _ready_time: float = 0.0
    _hashes: list[int] = field(default_factory=list)
    _held: list[int] = field(default_factory=list)
    _uncached: int = 0
    _n_hashed: int = 0
    _hashable: bool = False

    @property
    def num_tokens(self) -> int:
        return self.num_prompt_tokens + self.num_output_tokens

    @property
    def finished(self) -> bool:
        return self.status == FINISHED


@dataclass(slots=True)
class StepOutcome:
    """What one ``Engine.step`` did; events happen at ``end``."""

    start: float
    duration: float
    num_scheduled_tokens: int = 0
    num_scheduled_seqs: int = 0
    emitted: list[SimRequest] = field(default_factory=list)
    first_token: list[SimRequest] = field(default_factory=list)
    finished: list[SimRequest] = field(default_factory=list)
    preempted: list[SimRequest] = field(default_factory=list)
    kv_events: list[KVEvent] = field(default_factory=list)

    @property
    def end(self) -> float:
        return self.start + self.duration


@dataclass(frozen=True, slots=True)
class EngineStats:
    """A snapshot of the engine for ``/metrics`` and for harness-side scrapes."""

    num_running: int
    num_waiting: int
    num_pending: int
    kv_usage: float
    num_gpu_blocks: int
    block_size: int
    max_loras: int
    running_loras: tuple[str, ...]
    waiting_loras: tuple[str, ...]
    prefix_cache_queries: int
    prefix_cache_hits: int
    num_preemptions: int
    num_finished: int
    num_steps: int
    num_adapter_loads: int
    busy_time: float
    encoder_cache_queries: int = 0  # vision: media items that needed their encoder output
    encoder_cache_hits: int = 0  # ... and found it in this server's encoder cache


class Engine:
    """One simulated vLLM engine core (see the module docstring)."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self._steptime = StepTimeModel(config)
        self._pool = BlockPool(config.num_gpu_blocks, record_events=config.kv_events)
        self._pending: list[tuple[float, int, SimRequest]] = []
        self._seq = 0
        self._waiting: deque[SimRequest] = deque()
        self._running: list[SimRequest] = []
        self._by_id: dict[str, SimRequest] = {}
        self._running_loras: dict[str, int] = {}
        self._gpu_loras: OrderedDict[str, None] = OrderedDict()
        self._cpu_loras: OrderedDict[str, None] = OrderedDict()
        self._lora_ids: dict[str, int] = {}
        self.prefix_cache_queries = 0
        self.prefix_cache_hits = 0
        self.num_preemptions = 0
        self.num_finished = 0
        self.num_steps = 0
        self.num_adapter_loads = 0
        self.busy_time = 0.0
        self.encoder_cache = EncoderCache(config.encoder_cache_items)

    # --- intake -----------------------------------------------------------------------------

    def add_request(self, req: SimRequest) -> None:
        """Queue ``req``; it becomes schedulable at ``arrival_time + api_overhead_s``."""
        cfg = self.config
        if req.request_id in self._by_id:
            raise RequestRejected(f"duplicate request id {req.request_id!r}")
        if req.prompt_token_ids is not None:
            req.num_prompt_tokens = len(req.prompt_token_ids)
        if req.num_prompt_tokens < 1:
            raise RequestRejected("the prompt must contain at least one token")
        if req.max_tokens < 1:
            raise RequestRejected("max_tokens must be at least 1")
        if req.num_prompt_tokens + req.max_tokens > cfg.max_model_len:
            raise RequestRejected(
                f"prompt ({req.num_prompt_tokens} tokens) plus max_tokens ({req.max_tokens}) "
                f"exceeds the maximum model length {cfg.max_model_len}"
            )
        if cfg.prefix_caching:
            if req.prompt_block_hashes is not None:
                req._hashes = list(req.prompt_block_hashes)
            elif req.prompt_token_ids is not None:
                req._hashes = block_hashes(req.prompt_token_ids, cfg.block_size, req.lora)
            req._hashable = req.prompt_token_ids is not None and req.output_token_ids is not None
        if req.lora is not None and req.lora not in self._lora_ids:
            self._lora_ids[req.lora] = len(self._lora_ids) + 1
        req._ready_time = req.arrival_time + (cfg.api_overhead_s + req.transfer_s) * cfg.time_scale
        req.status = PENDING
        self._by_id[req.request_id] = req
        self._seq += 1
        heapq.heappush(self._pending, (req._ready_time, self._seq, req))

    def abort(self, request_id: str) -> bool:
        """Drop a request wherever it is (a client went away); frees its KV blocks."""
        req = self._by_id.pop(request_id, None)
        if req is None:
            return False
        if req.status == RUNNING:
            self._running.remove(req)
            self._free(req)
        elif req.status == WAITING:
            self._waiting.remove(req)
        elif req.status == PENDING:
            self._pending = [p for p in self._pending if p[2] is not req]
            heapq.heapify(self._pending)
        req.status = ABORTED
        return True

    # --- time -------------------------------------------------------------------------------

    def has_work(self) -> bool:
        return bool(self._running or self._waiting or self._pending)

    def next_step_time(self, now: float) -> float | None:
        """When the driver should call ``step`` next, given the previous step ended at ``now``."""
        if self._running or self._waiting:
            return now
        if self._pending:
            return max(now, self._pending[0][0])
        return None

    # --- the step ---------------------------------------------------------------------------

    def step(self, now: float) -> StepOutcome:
        """Schedule and run one batch starting at ``now`` (see the module docstring)."""
        cfg = self.config
        bs = cfg.block_size
        pool = self._pool
        pending = self._pending
        waiting = self._waiting
        while pending and pending[0][0] <= now:
            req = heapq.heappop(pending)[2]
            req.status = WAITING
            waiting.append(req)

        out = StepOutcome(start=now, duration=0.0)
        budget = cfg.max_num_batched_tokens
        chunked = cfg.chunked_prefill
        sched: list[SimRequest] = []
        sched_n: list[int] = []
        running = self._running
        preempted = out.preempted

        # 1. running requests, oldest first
        i = 0
        while i < len(running):
            req = running[i]
            n = req.num_prompt_tokens + req.num_output_tokens - req.num_computed_tokens
            if n > budget:
                n = budget
            if n <= 0:
                i += 1
                continue
            need = -(-(req.num_computed_tokens + n) // bs) - len(req._held) - req._uncached
            self_preempted = False
            while need > 0 and not pool.allocate(need):
                victim = running.pop()
                self._preempt(victim, now)
                preempted.append(victim)
                if victim is req:
                    self_preempted = True
                    break
            if self_preempted:
                break
            if need > 0:
                req._uncached += need
            sched.append(req)
            sched_n.append(n)
            budget -= n
            i += 1

        # 2. waiting requests, FCFS, only when nothing was preempted this step
        lora_load = 0.0
        encoder = 0.0  # vision encoder seconds for the items first scheduled this step
        if not preempted and waiting:
            max_seqs = cfg.max_num_seqs
            max_loras = cfg.max_loras
            running_loras = self._running_loras
            skipped: list[SimRequest] = []
            while waiting and budget > 0 and len(running) < max_seqs:
                req = waiting[0]
                lora = req.lora
                if (
                    lora is not None
                    and lora not in running_loras
                    and len(running_loras) >= max_loras
                ):
                    skipped.append(waiting.popleft())
                    continue
                total = req.num_prompt_tokens + req.num_output_tokens
                hit = ev = 0
                if cfg.prefix_caching and req._hashes:
                    hit, ev = pool.match(req._hashes, (total - 1) // bs)
                computed = hit * bs
                if req.remote_kv and req.num_preemptions == 0:
                    computed = max(computed, req.num_prompt_tokens - 1)  # pulled, not computed
                n = total - computed
                if n > budget:
                    if not chunked:
                        break
                    n = budget
                need = -(-(computed + n) // bs) - hit
                if need + ev > pool.num_free:
                    break
                waiting.popleft()
                if hit:
                    held = req._hashes[:hit]
                    pool.acquire(held)
                    req._held = held
                pool.allocate(need)
                req._uncached = need
                req._n_hashed = hit
                req.num_computed_tokens = computed
                if req.num_preemptions == 0:
                    req.num_cached_tokens = hit * bs
                    self.prefix_cache_queries += total
                    self.prefix_cache_hits += hit * bs
                    if req.media:
                        encoder += self.encoder_cache.encode_time(
                            req.media, computed, cfg.encoder_s_per_token
                        )
                if req.first_scheduled_time is None:
                    req.first_scheduled_time = now
                req.status = RUNNING
                running.append(req)
                if lora is not None:
                    running_loras[lora] = running_loras.get(lora, 0) + 1
                    lora_load += self._ensure_adapter(lora)
                sched.append(req)
                sched_n.append(n)
                budget -= n
            if skipped:
                waiting.extendleft(reversed(skipped))

        if not sched:
            out.kv_events = self._drain_events()
            return out

        # 3. step time
        n_tokens = 0
        decode_ctx = 0
        prefill_att = 0.0
        adapters: set[str] = set()
        for req, n in zip(sched, sched_n, strict=True):
            n_tokens += n
            if n == 1:
                decode_ctx += req.num_computed_tokens + 1
            else:
                prefill_att += n * (req.num_computed_tokens + n / 2)
            if req.lora is not None:
                adapters.add(req.lora)
        dt = self._steptime.duration(
            n_tokens, len(sched), decode_ctx, prefill_att, len(adapters), lora_load
        )
        dt += encoder * cfg.time_scale
        end = now + dt
        out.duration = dt
        out.num_scheduled_tokens = n_tokens
        out.num_scheduled_seqs = len(sched)
        self.num_steps += 1
        self.busy_time += dt

        # 4. apply: advance computed tokens, cache full blocks, emit tokens at the step's end
        prefix = cfg.prefix_caching
        max_len = cfg.max_model_len
        any_finished = False
        for req, n in zip(sched, sched_n, strict=True):
            req.num_computed_tokens += n
            if prefix and req.num_computed_tokens >= (req._n_hashed + 1) * bs:
                self._cache_full_blocks(req)
            if req.num_computed_tokens < req.num_prompt_tokens + req.num_output_tokens:
                continue  # a partial prefill chunk: no token yet
            req.num_output_tokens += 1
            req.prev_token_time = req.last_token_time
            req.last_token_time = end
            out.emitted.append(req)
            if req.first_token_time is None:
                req.first_token_time = end
                out.first_token.append(req)
            if (
                req.num_output_tokens >= req.max_tokens
                or req.num_prompt_tokens + req.num_output_tokens >= max_len
            ):
                req.status = FINISHED
                req.finish_time = end
                self._free(req)
                self._by_id.pop(req.request_id, None)
                self.num_finished += 1
                out.finished.append(req)
                any_finished = True
        if any_finished:
            self._running = [r for r in running if r.status == RUNNING]
        out.kv_events = self._drain_events()
        return out

    # --- internals --------------------------------------------------------------------------

    def _drain_events(self) -> list[KVEvent]:
        if not self._pool.events:
            return []
        events = self._pool.events
        self._pool.events = []
        return events

    def _cache_full_blocks(self, req: SimRequest) -> None:
        """Hash and cache the request's newly full blocks (prompt, and output when known)."""
        bs = self.config.block_size
        full = req.num_computed_tokens // bs
        if full <= req._n_hashed:
            return
        hashes = req._hashes
        if len(hashes) < full and req._hashable:
            self._extend_hashes(req, full)
        pool = self._pool
        stored: list[int] = []
        start = req._n_hashed
        end = min(full, len(hashes))
        for k in range(start, end):
            h = hashes[k]
            if req._uncached and pool.promote(h):
                req._uncached -= 1
                req._held.append(h)
                stored.append(h)
        req._n_hashed = end if (end < len(hashes) or req._hashable) else _NO_MORE_BLOCKS
        if stored and pool.record_events:
            toks: tuple[int, ...] = ()
            if req.prompt_token_ids is not None:
                all_ids = list(req.prompt_token_ids)
                if req.output_token_ids is not None:
                    all_ids.extend(req.output_token_ids[: req.num_output_tokens])
                toks = tuple(all_ids[start * bs : end * bs])
            pool.events.append(
                BlockStored(
                    block_hashes=tuple(stored),
                    parent_block_hash=hashes[start - 1] if start > 0 else None,
                    token_ids=toks,
                    block_size=bs,
                    lora_id=self._lora_ids.get(req.lora) if req.lora else None,
                )
            )

    def _extend_hashes(self, req: SimRequest, full: int) -> None:
        """Extend the hash chain over generated tokens (ids known from ``output_token_ids``)."""
        assert req.prompt_token_ids is not None
        assert req.output_token_ids is not None
        bs = self.config.block_size
        hashes = req._hashes
        n_known = req.num_prompt_tokens + min(req.num_output_tokens, len(req.output_token_ids))
        upto = min(full, n_known // bs)
        if upto <= len(hashes):
            return
        ids = list(req.prompt_token_ids) + list(req.output_token_ids[: upto * bs])
        parent = hashes[-1] if hashes else ROOT_HASH
        for k in range(len(hashes), upto):
            parent = hash_block(parent, ids[k * bs : (k + 1) * bs], req.lora)
            hashes.append(parent)

    def _free(self, req: SimRequest) -> None:
        self._pool.release(req._held, req._uncached)
        req._held = []
        req._uncached = 0
        if req.lora is not None:
            c = self._running_loras[req.lora] - 1
            if c:
                self._running_loras[req.lora] = c
            else:
                del self._running_loras[req.lora]

    def _preempt(self, req: SimRequest, now: float) -> None:
        """Recompute-preemption: free the blocks (hashes survive) and requeue at the front."""
        del now
        self._free(req)
        req.num_computed_tokens = 0
        req._n_hashed = 0
        req.num_preemptions += 1
        req.status = WAITING
        self.num_preemptions += 1
        self._waiting.appendleft(req)

    def _ensure_adapter(self, lora: str) -> float:
        """Make ``lora`` GPU-resident; returns the load time charged to this step."""
        gpu = self._gpu_loras
        if lora in gpu:
            gpu.move_to_end(lora)
            return 0.0
        cpu = self._cpu_loras
        cost = self.config.lora_gpu_load_s if lora in cpu else self.config.lora_cold_load_s
        self._touch_cpu(lora)
        if len(gpu) >= self.config.max_loras:
            for name in gpu:
                if name not in self._running_loras or name == lora:
                    del gpu[name]
                    break
            else:
                gpu.popitem(last=False)
        gpu[lora] = None
        self.num_adapter_loads += 1
        return cost

    def _touch_cpu(self, lora: str) -> None:
        cpu = self._cpu_loras
        cpu[lora] = None
        cpu.move_to_end(lora)
        while len(cpu) > self.config.max_cpu_loras:
            cpu.popitem(last=False)

    # --- adapters and stats -----------------------------------------------------------------

    def load_adapter(self, lora: str) -> float:
        """Register an adapter into the CPU cache (``/v1/load_lora_adapter``); returns its cost."""
        cost = 0.0 if lora in self._cpu_loras else self.config.lora_cold_load_s
        self._touch_cpu(lora)
        if lora not in self._lora_ids:
            self._lora_ids[lora] = len(self._lora_ids) + 1
        return cost * self.config.time_scale

    def unload_adapter(self, lora: str) -> None:
        """Forget an adapter's CPU and idle GPU residency (``/v1/unload_lora_adapter``)."""
        self._cpu_loras.pop(lora, None)
        if lora not in self._running_loras:
            self._gpu_loras.pop(lora, None)

    def reset_prefix_cache(self) -> bool:
        return self._pool.reset_prefix_cache()

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def kv_usage(self) -> float:
        return self._pool.usage()

    @property
    def pool(self) -> BlockPool:
        return self._pool

    def get(self, request_id: str) -> SimRequest | None:
        return self._by_id.get(request_id)

    def stats(self) -> EngineStats:
        """A consistent snapshot of queue, KV, LoRA and counter state."""
        waiting_loras = {r.lora for r in self._waiting if r.lora is not None}
        waiting_loras.update(r.lora for _, _, r in self._pending if r.lora is not None)
        return EngineStats(
            num_running=len(self._running),
            num_waiting=len(self._waiting),
            num_pending=len(self._pending),
            kv_usage=self._pool.usage(),
            num_gpu_blocks=self.config.num_gpu_blocks,
            block_size=self.config.block_size,
            max_loras=self.config.max_loras,
            running_loras=tuple(sorted(self._running_loras)),
            waiting_loras=tuple(sorted(waiting_loras)),
            prefix_cache_queries=self.prefix_cache_queries,
            prefix_cache_hits=self.prefix_cache_hits,
            num_preemptions=self.num_preemptions,
            num_finished=self.num_finished,
            num_steps=self.num_steps,
            num_adapter_loads=self.num_adapter_loads,
            busy_time=self.busy_time,
            encoder_cache_queries=self.encoder_cache.queries,
            encoder_cache_hits=self.encoder_cache.hits,
        )
