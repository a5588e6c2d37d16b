"""Generated workloads: named presets of request shapes and arrival processes, all seeded.

A workload is a list of :class:`BenchRequest` sorted by arrival time. Prompts are token-id tuples
(what the simulated engine caches and hashes) that render to text deterministically, ~4
characters per token (:mod:`kvroute_bench.text`: what kvroute's prefix scorer hashes and what the
live generator sends), so a prefix shared in tokens is also shared in text. Requests that share
nothing get disjoint token-id ranges, which costs nothing to generate and can never produce an
accidental cache hit.

Presets follow the shapes in ``docs/benchmarks.md`` / the performance-model reference (§6):
ShareGPT-like lengths, upstream's shared-prefix benchmark, multi-turn chat, multi-LoRA with Zipf
adapter popularity, mixed criticality and gamma-bursty arrivals; and the scheduler-v2 cases
(issue 11): a heterogeneous pool (``pool``, an accelerator spec the bench applies), multi-turn
agent sessions carrying a session id, code generation (long prompts sharing a repository
context, short answers), reasoning (short prompts, long Pareto-tailed answers) and
heavier-tailed lengths (``input_dist``/``output_dist`` = ``lognormal`` or ``pareto``). Every
parameter is overridable by name (``--param key=value``); unknown names are errors.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from kvroute.sdk import Criticality
from kvroute_bench.arrivals import arrival_times
from kvroute_bench.text import render

# Token ids from here up are handed out once each (never shared). Ids stay below 2**32, which is
# what the simulator's block hashing packs them into.
_UNIQUE_BASE = 1 << 20
_UNIQUE_SPAN = 1 << 28  # ids per seed slot (16 slots)
SESSION_HEADER = "x-session-id"
SLO_TTFT_HEADER = "x-slo-ttft-ms"
LENGTH_DISTS = ("lognormal", "pareto")


@dataclass(frozen=True, slots=True)
class BenchRequest:
    """One request of a workload. ``arrival`` is seconds from the start of the stage."""

    request_id: str
    arrival: float
    prompt: tuple[int, ...]
    output_len: int
    adapter: str | None = None  # LoRA adapter name; None = the base model
    criticality: Criticality = Criticality.STANDARD
    ttft_slo: float | None = None  # seconds; None = the run's default SLO
    group: str = ""  # prefix group / session / adapter class, for per-group reports
    session_id: str | None = None  # conversation id (sent as ``x-session-id``); None = none
    slo_header: bool = False  # send ``ttft_slo`` as ``x-slo-ttft-ms`` (what SLO-aware scorers read)

    @property
    def headers(self) -> dict[str, str]:
        """Request headers a client would send beyond criticality (session id, TTFT SLO)."""
        out = {SESSION_HEADER: self.session_id} if self.session_id is not None else {}
        if self.slo_header and self.ttft_slo is not None:
            out[SLO_TTFT_HEADER] = f"{self.ttft_slo * 1000.0:g}"
        return out

    @property
    def prompt_len(self) -> int:
        return len(self.prompt)

    def text(self) -> str:
        """The prompt rendered as short words, one per token and ~4 characters per token
        (:mod:`kvroute_bench.text`), so shared token prefixes stay shared text prefixes and the
        EPP's ``len(text) / 4`` token estimates match the simulated prompt."""
        return render(self.prompt)


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    """All knobs of all presets; each preset uses the subset named in its docstring."""

    kind: str = "sharegpt"
    arrival: str = "poisson"  # poisson | gamma
    burstiness: float = 1.0  # gamma shape (1 = Poisson, < 1 burstier)
    # ShareGPT-like lognormal lengths (mean, sigma of the underlying normal), clipped.
    input_mean: float = 220.0
    input_sigma: float = 0.9
    output_mean: float = 200.0
    output_sigma: float = 0.9
    min_len: int = 4
    max_input: int = 2048
    max_output: int = 1024
    # Length distribution of the lognormal-by-default draws above: lognormal | pareto. Pareto
    # keeps the same mean with shape ``pareto_alpha`` (heavier tail for smaller alpha > 1).
    input_dist: str = "lognormal"
    output_dist: str = "lognormal"
    pareto_alpha: float = 1.8
    # agent sessions: prompt + output cap (the engine rejects more than max_model_len 4096)
    max_context: int = 4000
    # accelerator pool spec (kvroute_sim.accelerators.parse_pool); "" = homogeneous --profile
    pool: str = ""
    # price per replica-hour by class, "h100=11.06,l4=0.71" (kvroute_bench.cost); "" = the
    # classes' defaults in kvroute.framework.accelerator. Sent as each endpoint's cost label.
    prices: str = ""
    # send each request's TTFT SLO as the x-slo-ttft-ms header
    slo_header: bool = False
    # shared-prefix / multi-turn
    num_groups: int = 150
    prompts_per_group: int = 5
    system_prompt_len: int = 6000
    question_len: int = 1200
    output_len: int = 1000
    turns: int = 5  # multi-turn: turns per session before it restarts
    # multi-lora
    num_adapters: int = 12
    zipf_s: float = 1.1
    # mixed-criticality
    critical_fraction: float = 0.3
    critical_ttft_slo: float = 0.5
    batch_input_mean: float = 1000.0
    batch_output_mean: float = 400.0
    # tiered (ShareGPT-like lengths for every class): critical_fraction critical requests
    # (critical_ttft_slo), sheddable_fraction sheddable (sheddable_ttft_slo), the rest standard
    # (standard_ttft_slo)
    sheddable_fraction: float = 0.3
    standard_ttft_slo: float = 1.0
    sheddable_ttft_slo: float = 2.0

    def with_params(self, params: Mapping[str, str]) -> WorkloadSpec:
        """Override fields from ``key=value`` strings, converting to each field's type."""
        types = {f.name: f.type for f in fields(self)}
        changes: dict[str, Any] = {}
        for key, raw in params.items():
            name = key.replace("-", "_")
            if name not in types:
                known = ", ".join(sorted(types))
                raise ValueError(f"unknown workload parameter {key!r} (known: {known})")
            current = getattr(self, name)
            if isinstance(current, bool):
                changes[name] = raw.lower() in ("1", "true", "yes")
            elif isinstance(current, int):
                changes[name] = int(raw)
            elif isinstance(current, float):
                changes[name] = float(raw)
            else:
                changes[name] = raw
        return replace(self, **changes)


PRESETS: dict[str, WorkloadSpec] = {
    "sharegpt": WorkloadSpec(kind="sharegpt"),
    "bursty": WorkloadSpec(kind="sharegpt", arrival="gamma", burstiness=0.3),
    # upstream benchmarking/prefix-cache-aware high-cache-values (150x5, 6000/1200/1000)
    "shared-prefix": WorkloadSpec(kind="shared-prefix"),
    # the same with system prompt and question flipped (low-cache-values)
    "shared-prefix-low": WorkloadSpec(
        kind="shared-prefix", system_prompt_len=1200, question_len=6000
    ),
    # SGLang generated-shared-prefix: 64 groups x 16, 2048/128/256
    "shared-prefix-sglang": WorkloadSpec(
        kind="shared-prefix",
        num_groups=64,
        prompts_per_group=16,
        system_prompt_len=2048,
        question_len=128,
        output_len=256,
    ),
    "multi-turn": WorkloadSpec(
        kind="multi-turn",
        num_groups=6,
        prompts_per_group=50,
        system_prompt_len=1000,
        question_len=100,
        output_len=150,
    ),
    "multi-lora": WorkloadSpec(kind="multi-lora"),
    "mixed-criticality": WorkloadSpec(kind="mixed-criticality"),
    # ---- scheduler v2 (issue 11) ----
    # ShareGPT-like traffic on a pool whose replicas really differ (10 replicas: 3 H100, 2 H200,
    # 1 MI300X, 2 A100, 2 L4; cycled for other counts)
    "heterogeneous": WorkloadSpec(kind="sharegpt", pool="h100:3,h200:2,mi300x:1,a100:2,l4:2"),
    # the same without the L4s (whose ~10x slower steps make any blind spreading collapse):
    # 4 H100, 2 H200, 1 MI300X, 3 A100
    "heterogeneous-datacenter": WorkloadSpec(kind="sharegpt", pool="h100:4,h200:2,mi300x:1,a100:3"),
    # ---- cost-aware routing (issue 13) ----
    # 4 H100 + 8 L4 at approximate GCP on-demand list prices per GPU-hour (kvroute_bench.cost);
    # ShareGPT-like chat in three tiers: 20 % critical (TTFT SLO 0.5 s), 50 % standard (1 s),
    # 30 % sheddable (2 s); each request carries its SLO as x-slo-ttft-ms
    "mixed-accelerators": WorkloadSpec(
        kind="tiered",
        pool="h100:4,l4:8",
        prices="h100=11.06,l4=0.71",
        slo_header=True,
        critical_fraction=0.2,
        sheddable_fraction=0.3,
    ),
    # ShareGPT-like means with Pareto tails on both lengths
    "sharegpt-heavy": WorkloadSpec(kind="sharegpt", input_dist="pareto", output_dist="pareto"),
    # 8 agents (1500-token system prompt with tools) x 16 live sessions; every turn appends a
    # tool result (lognormal, mean 250) and the previous action (Pareto, mean 120)
    "agent-sessions": WorkloadSpec(
        kind="agent",
        num_groups=8,
        prompts_per_group=16,
        system_prompt_len=1500,
        question_len=250,
        input_sigma=1.0,
        output_mean=120.0,
        output_dist="pareto",
        max_output=1024,
        turns=8,
    ),
    # 40 repositories (Zipf 1.1) with a 1024-token shared context, + ~1500 unique prompt tokens,
    # ~100-token answers
    "code-generation": WorkloadSpec(
        kind="code",
        num_groups=40,
        zipf_s=1.1,
        system_prompt_len=1024,
        input_mean=1500.0,
        input_sigma=0.7,
        max_input=3500,
        output_mean=100.0,
        output_sigma=0.8,
        max_output=512,
    ),
    # short questions, long Pareto-tailed chains of thought
    "reasoning": WorkloadSpec(
        kind="sharegpt",
        input_mean=150.0,
        input_sigma=0.8,
        max_input=1024,
        output_mean=1500.0,
        output_dist="pareto",
        max_output=3000,
    ),
}


def _lognormal_len(rng: random.Random, mean: float, sigma: float, lo: int, hi: int) -> int:
    """A lognormal draw with the given *mean* (not median), clipped to [lo, hi]."""
    mu = math.log(mean) - sigma * sigma / 2.0
    return max(lo, min(hi, round(rng.lognormvariate(mu, sigma))))


def _pareto_len(rng: random.Random, mean: float, alpha: float, lo: int, hi: int) -> int:
    """A Pareto(alpha) draw scaled to the given mean (``x_m = mean*(alpha-1)/alpha``), clipped."""
    if alpha <= 1.0:
        raise ValueError(f"pareto_alpha must be > 1 for a finite mean, got {alpha}")
    x_m = mean * (alpha - 1.0) / alpha
    return max(lo, min(hi, round(x_m * rng.paretovariate(alpha))))


def draw_len(
    rng: random.Random, dist: str, mean: float, sigma: float, alpha: float, lo: int, hi: int
) -> int:
    """One length from ``dist`` (``lognormal``: mean and sigma; ``pareto``: mean and alpha)."""
    if dist == "lognormal":
        return _lognormal_len(rng, mean, sigma, lo, hi)
    if dist == "pareto":
        return _pareto_len(rng, mean, alpha, lo, hi)
    raise ValueError(f"unknown length distribution {dist!r} (known: {', '.join(LENGTH_DISTS)})")


def _input_len(spec: WorkloadSpec, rng: random.Random, mean: float, hi: int) -> int:
    return draw_len(
        rng, spec.input_dist, mean, spec.input_sigma, spec.pareto_alpha, spec.min_len, hi
    )


def _output_len(spec: WorkloadSpec, rng: random.Random) -> int:
    return draw_len(
        rng,
        spec.output_dist,
        spec.output_mean,
        spec.output_sigma,
        spec.pareto_alpha,
        spec.min_len,
        spec.max_output,
    )


class _UniqueTokens:
    """Hands out disjoint token-id ranges: prompts built from them never share a block."""

    def __init__(self, seed: int) -> None:
        # Different seeds get different ranges too, so two workloads never collide by accident.
        self._base = _UNIQUE_BASE + (seed % 15) * _UNIQUE_SPAN
        self._used = 0

    def take(self, n: int) -> tuple[int, ...]:
        if self._used + n > _UNIQUE_SPAN:
            self._used = 0  # wrap: after 268M tokens an old id may recur (harmless)
        start = self._base + self._used
        self._used += n
        return tuple(range(start, start + n))


def _zipf_weights(n: int, s: float) -> list[float]:
    raw = [1.0 / (k**s) for k in range(1, n + 1)]
    total = sum(raw)
    return [w / total for w in raw]


Shape = tuple[tuple[int, ...], int, str | None, Criticality, float | None, str, str | None]
ShapeFn = Callable[[int], Shape]


def _sharegpt_shapes(spec: WorkloadSpec, rng: random.Random, uniq: _UniqueTokens) -> ShapeFn:
    def shape(_i: int) -> Shape:
        n_in = _input_len(spec, rng, spec.input_mean, spec.max_input)
        n_out = _output_len(spec, rng)
        return uniq.take(n_in), n_out, None, Criticality.STANDARD, None, "sharegpt", None

    return shape


def _shared_prefix_shapes(spec: WorkloadSpec, rng: random.Random, uniq: _UniqueTokens) -> ShapeFn:
    """Each (group, prompt) pair is a fixed prompt: the group's system prompt + its question;
    arrivals pick a pair uniformly, as inference-perf's shared_prefix data generator does."""
    systems = [uniq.take(spec.system_prompt_len) for _ in range(spec.num_groups)]
    questions: dict[tuple[int, int], tuple[int, ...]] = {}

    def shape(_i: int) -> Shape:
        g = rng.randrange(spec.num_groups)
        p = rng.randrange(spec.prompts_per_group)
        q = questions.get((g, p))
        if q is None:
            q = questions[(g, p)] = uniq.take(spec.question_len)
        return systems[g] + q, spec.output_len, None, Criticality.STANDARD, None, f"g{g}", None

    return shape


def _multi_turn_shapes(spec: WorkloadSpec, rng: random.Random, uniq: _UniqueTokens) -> ShapeFn:
    """``num_groups`` system prompts, ``prompts_per_group`` sessions each; an arrival advances a
    random session by one turn: its prompt is the session's whole history (system prompt, earlier
    questions and answers) plus a new question. Answers are synthesized tokens (the engine's own
    output is not fed back), and after ``turns`` turns the session starts over. Open-loop arrivals
    can send turn k+1 before turn k finished; real chat cannot, which makes this slightly
    pessimistic for affinity routing."""
    systems = [uniq.take(spec.system_prompt_len) for _ in range(spec.num_groups)]
    history: dict[tuple[int, int], tuple[int, ...]] = {}
    turn: dict[tuple[int, int], int] = {}
    epoch: dict[tuple[int, int], int] = {}

    def shape(_i: int) -> Shape:
        key = (rng.randrange(spec.num_groups), rng.randrange(spec.prompts_per_group))
        if turn.get(key, 0) >= spec.turns:
            turn[key] = 0
            history[key] = ()
            epoch[key] = epoch.get(key, 0) + 1
        prompt = systems[key[0]] + history.get(key, ()) + uniq.take(spec.question_len)
        history[key] = prompt[spec.system_prompt_len :] + uniq.take(spec.output_len)
        turn[key] = turn.get(key, 0) + 1
        group = f"s{key[0]}.{key[1]}"
        session = f"{group}.{epoch.get(key, 0)}"
        return prompt, spec.output_len, None, Criticality.STANDARD, None, group, session

    return shape


def _multi_lora_shapes(spec: WorkloadSpec, rng: random.Random, uniq: _UniqueTokens) -> ShapeFn:
    """ShareGPT-like lengths; adapter k (1-based) drawn with probability ∝ 1/k^s."""
    weights = _zipf_weights(spec.num_adapters, spec.zipf_s)
    names = [f"adapter-{k}" for k in range(spec.num_adapters)]
    base = _sharegpt_shapes(spec, rng, uniq)

    def shape(i: int) -> Shape:
        prompt, n_out, _a, crit, slo, _g, _s = base(i)
        k = rng.choices(range(spec.num_adapters), weights)[0]
        return prompt, n_out, names[k], crit, slo, names[k], None

    return shape


def _mixed_shapes(spec: WorkloadSpec, rng: random.Random, uniq: _UniqueTokens) -> ShapeFn:
    """Critical chat (ShareGPT lengths, TTFT SLO) mixed with sheddable long batch requests."""
    chat = _sharegpt_shapes(spec, rng, uniq)

    def shape(i: int) -> Shape:
        if rng.random() < spec.critical_fraction:
            prompt, n_out, *_ = chat(i)
            crit = Criticality.CRITICAL
            return prompt, n_out, None, crit, spec.critical_ttft_slo, "critical", None
        n_in = _lognormal_len(rng, spec.batch_input_mean, 0.5, spec.min_len, 4 * spec.max_input)
        n_out = _lognormal_len(rng, spec.batch_output_mean, 0.5, spec.min_len, spec.max_output)
        return uniq.take(n_in), n_out, None, Criticality.SHEDDABLE, None, "sheddable", None

    return shape


def _tiered_shapes(spec: WorkloadSpec, rng: random.Random, uniq: _UniqueTokens) -> ShapeFn:
    """ShareGPT-like chat in three criticality tiers, each with its own TTFT SLO."""
    chat = _sharegpt_shapes(spec, rng, uniq)

    def shape(i: int) -> Shape:
        prompt, n_out, *_ = chat(i)
        u = rng.random()
        if u < spec.critical_fraction:
            crit, slo = Criticality.CRITICAL, spec.critical_ttft_slo
        elif u < spec.critical_fraction + spec.sheddable_fraction:
            crit, slo = Criticality.SHEDDABLE, spec.sheddable_ttft_slo
        else:
            crit, slo = Criticality.STANDARD, spec.standard_ttft_slo
        return prompt, n_out, None, crit, slo, crit.name.lower(), None

    return shape


def _agent_shapes(spec: WorkloadSpec, rng: random.Random, uniq: _UniqueTokens) -> ShapeFn:
    """Multi-turn agent sessions. ``num_groups`` agents (a ``system_prompt_len``-token system
    prompt with its tools) run ``prompts_per_group`` live sessions each; an arrival advances a
    random live session by one turn. Its prompt is the agent's system prompt, the session's whole
    history (earlier tool results and actions) and a new tool result (``input_dist``, mean
    ``question_len``); its output is the next action (``output_dist``, mean ``output_mean``),
    appended to the history as synthesized tokens. After each turn the session ends with
    probability ``1/turns`` (geometric, mean ``turns`` turns), and also when the next turn would
    not fit ``max_context``; a new session with a new id then takes its slot. Each request
    carries its session id (``x-session-id``). Open-loop, as ``multi-turn``."""
    systems = [uniq.take(spec.system_prompt_len) for _ in range(spec.num_groups)]
    history: dict[tuple[int, int], tuple[int, ...]] = {}
    epoch: dict[tuple[int, int], int] = {}
    end_p = 1.0 / max(1, spec.turns)

    def shape(_i: int) -> Shape:
        key = (rng.randrange(spec.num_groups), rng.randrange(spec.prompts_per_group))
        room = max(spec.min_len, spec.max_context - spec.system_prompt_len - spec.max_output)
        n_in = _input_len(spec, rng, float(spec.question_len), room)
        n_out = _output_len(spec, rng)
        past = history.get(key, ())
        if len(past) + n_in > room:  # the context is full: this slot starts a new session
            past = ()
            epoch[key] = epoch.get(key, 0) + 1
        prompt = systems[key[0]] + past + uniq.take(n_in)
        session = f"a{key[0]}.{key[1]}.{epoch.get(key, 0)}"
        if rng.random() < end_p:
            history[key] = ()
            epoch[key] = epoch.get(key, 0) + 1
        else:
            history[key] = prompt[spec.system_prompt_len :] + uniq.take(n_out)
        return prompt, n_out, None, Criticality.STANDARD, None, f"a{key[0]}", session

    return shape


def _code_shapes(spec: WorkloadSpec, rng: random.Random, uniq: _UniqueTokens) -> ShapeFn:
    """Code generation: ``num_groups`` repositories, drawn Zipf(``zipf_s``), each with a
    ``system_prompt_len``-token context every request on it shares (instructions and the files
    an assistant includes), then a unique part (``input_dist``, mean ``input_mean``; the whole
    prompt at most ``max_input``) and a short answer (``output_dist``, mean ``output_mean``)."""
    repos = [uniq.take(spec.system_prompt_len) for _ in range(spec.num_groups)]
    weights = _zipf_weights(spec.num_groups, spec.zipf_s)
    room = max(spec.min_len, spec.max_input - spec.system_prompt_len)

    def shape(_i: int) -> Shape:
        g = rng.choices(range(spec.num_groups), weights)[0]
        n_in = _input_len(spec, rng, spec.input_mean, room)
        n_out = _output_len(spec, rng)
        return repos[g] + uniq.take(n_in), n_out, None, Criticality.STANDARD, None, f"repo{g}", None

    return shape


_SHAPES: dict[str, Callable[[WorkloadSpec, random.Random, _UniqueTokens], ShapeFn]] = {
    "sharegpt": _sharegpt_shapes,
    "shared-prefix": _shared_prefix_shapes,
    "multi-turn": _multi_turn_shapes,
    "multi-lora": _multi_lora_shapes,
    "mixed-criticality": _mixed_shapes,
    "tiered": _tiered_shapes,
    "agent": _agent_shapes,
    "code": _code_shapes,
}


def resolve_spec(name: str, params: Mapping[str, str] | None = None) -> WorkloadSpec:
    if name not in PRESETS:
        raise ValueError(f"unknown workload {name!r} (presets: {', '.join(sorted(PRESETS))})")
    return PRESETS[name].with_params(params or {})


def generate(spec: WorkloadSpec, *, rate: float, duration: float, seed: int) -> list[BenchRequest]:
    """Requests arriving over ``[0, duration)`` at mean ``rate`` per second, deterministic for
    ``seed``. Arrival times and shapes come from separate streams, so changing the rate changes
    when requests come, not what they are."""
    if spec.kind not in _SHAPES:
        raise ValueError(f"unknown workload kind {spec.kind!r}")
    times = arrival_times(
        random.Random(seed * 7919 + 1),
        rate=rate,
        duration=duration,
        process=spec.arrival,
        shape=spec.burstiness,
    )
    rng = random.Random(seed)
    shape = _SHAPES[spec.kind](spec, rng, _UniqueTokens(seed))
    out: list[BenchRequest] = []
    for i, t in enumerate(times):
        prompt, n_out, adapter, crit, slo, group, session = shape(i)
        out.append(
            BenchRequest(
                f"r{i}", t, prompt, n_out, adapter, crit, slo, group, session, spec.slo_header
            )
        )
    return out


# ---------------------------------------------------------------- trace replay (JSONL)


@dataclass(frozen=True, slots=True)
class TraceOptions:
    hash_block: int = 512  # tokens per entry of a Mooncake-style ``hash_ids`` list
    time_scale: float = 1.0  # multiply arrival times (<1 compresses the trace)
    extra: dict[str, Any] = field(default_factory=dict)


def load_trace(path: Path, options: TraceOptions | None = None) -> list[BenchRequest]:
    """Read a JSONL trace. Each line is an object with:

    - arrival: ``arrival`` (seconds) or ``timestamp`` (milliseconds, Mooncake);
    - prompt: ``prompt_tokens`` (token ids), or ``hash_ids`` (Mooncake: each id is one
      ``hash_block``-token block; equal ids are equal blocks) with ``input_length``, or just
      ``prompt_len``/``input_length`` (unique tokens);
    - ``output_len``/``output_length``; optional ``adapter``, ``criticality``, ``ttft_slo``,
      ``group``, ``session_id``.
    """
    opts = options or TraceOptions()
    uniq = _UniqueTokens(0)
    out: list[BenchRequest] = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            out.append(_trace_record(rec, len(out), opts, uniq))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{lineno}: {exc}") from exc
    out.sort(key=lambda r: r.arrival)
    return out


def _trace_record(
    rec: Mapping[str, Any], index: int, opts: TraceOptions, uniq: _UniqueTokens
) -> BenchRequest:
    arrival = float(rec["arrival"]) if "arrival" in rec else float(rec["timestamp"]) / 1000.0
    n_in = int(rec.get("prompt_len", rec.get("input_length", 0)))
    if "prompt_tokens" in rec:
        prompt = tuple(int(t) for t in rec["prompt_tokens"])
    elif "hash_ids" in rec:
        blocks: list[int] = []
        for h in rec["hash_ids"]:
            base = int(h) * opts.hash_block
            blocks.extend(range(base, base + opts.hash_block))
        prompt = tuple(blocks[:n_in]) if n_in else tuple(blocks)
        if n_in > len(prompt):
            prompt += uniq.take(n_in - len(prompt))
    else:
        if n_in <= 0:
            raise KeyError("prompt_tokens, hash_ids or prompt_len/input_length")
        prompt = uniq.take(n_in)
    n_out = int(rec.get("output_len", rec.get("output_length", 1)))
    crit = Criticality(rec.get("criticality", Criticality.STANDARD.value))
    slo = rec.get("ttft_slo")
    return BenchRequest(
        request_id=str(rec.get("request_id", f"t{index}")),
        arrival=arrival * opts.time_scale,
        prompt=prompt,
        output_len=max(1, n_out),
        adapter=rec.get("adapter"),
        criticality=crit,
        ttft_slo=float(slo) if slo is not None else None,
        group=str(rec.get("group", "")),
        session_id=str(rec["session_id"]) if rec.get("session_id") is not None else None,
    )


def dump_trace(requests: Iterable[BenchRequest], path: Path) -> None:
    """Write requests as JSONL that :func:`load_trace` reads back identically."""
    with path.open("w") as fh:
        for r in requests:
            rec: dict[str, Any] = {
                "request_id": r.request_id,
                "arrival": r.arrival,
                "prompt_tokens": list(r.prompt),
                "output_len": r.output_len,
                "criticality": r.criticality.value,
                "group": r.group,
            }
            if r.adapter is not None:
                rec["adapter"] = r.adapter
            if r.ttft_slo is not None:
                rec["ttft_slo"] = r.ttft_slo
            if r.session_id is not None:
                rec["session_id"] = r.session_id
            fh.write(json.dumps(rec, separators=(",", ":")) + "\n")
