"""Engine and server configuration, and the named profiles (pydantic, loadable from YAML).

All times are seconds. The step-time formula (see ``steptime.py`` and
``vllm-performance-model.md`` §2.3)::

    t_step = (T_lin(N) + t_fix + c_seq*B + c_kv*sum(decode ctx) + c_att*sum(n*(ctx + n/2))
              + eager_overhead*[N > cudagraph_max_tokens]) * (1 + lora_step_overhead*A)
             + adapter loads this step

all multiplied by ``time_scale`` (the ``slow`` profile's xk). ``T_lin`` interpolates
``linear_table`` (tokens in step -> seconds), extrapolating past the last point with its slope.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from kvroute_sim.disagg import KVShape, Role

# Linear-layer time per step (tokens in step -> seconds) for Llama-3-8B BF16 on one H100.
# Anchored on Vidur's Llama-2-7B H100 medians x1.08 (§2.3) at 1-128 tokens (weight-bound) and
# at 1024+ (compute-bound, ~20 us/token); the 256-512 transition is fitted to the §2.4 curve
# (vLLM runs these sizes under CUDA graphs, flatter than Vidur's eager per-op profile).
H100_LLAMA3_8B_LINEAR: tuple[tuple[int, float], ...] = (
    (1, 6.05e-3),
    (64, 6.37e-3),
    (128, 6.80e-3),
    (256, 8.00e-3),
    (384, 9.60e-3),
    (512, 14.50e-3),
    (1024, 23.00e-3),
    (2048, 44.06e-3),
    (4096, 91.26e-3),
)


class EngineConfig(BaseModel):
    """Every knob of one simulated engine (scheduler budgets, KV cache, LoRA, step time)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # scheduler
    max_num_seqs: int = Field(128, ge=1)
    max_num_batched_tokens: int = Field(8192, ge=1)
    max_model_len: int = Field(4096, ge=2)
    chunked_prefill: bool = True
    prefix_caching: bool = True
    # KV cache
    block_size: int = Field(16, ge=1)
    num_gpu_blocks: int = Field(27000, ge=1)
    # LoRA
    max_loras: int = Field(1, ge=1)
    max_cpu_loras: int = Field(4, ge=1)
    lora_gpu_load_s: float = Field(0.002, ge=0)  # CPU-resident adapter -> GPU slot
    lora_cold_load_s: float = Field(0.05, ge=0)  # adapter not in CPU cache (disk)
    lora_step_overhead: float = Field(0.02, ge=0)  # factor k in (1 + k*A), rank-8 adapters
    # step time
    linear_table: tuple[tuple[int, float], ...] = H100_LLAMA3_8B_LINEAR
    t_fix: float = Field(1.2e-3, ge=0)
    c_seq: float = Field(4.4e-6, ge=0)
    c_kv: float = Field(40e-9, ge=0)  # 128 KiB/token at 3.35 TB/s
    c_att: float = Field(1.2e-9, ge=0)
    cudagraph_max_tokens: int = Field(512, ge=0)
    eager_overhead: float = Field(3e-3, ge=0)  # steps too big for CUDA graphs
    # API-server latency outside the engine (HTTP, tokenisation, IPC), added before admission
    api_overhead_s: float = Field(0.019, ge=0)
    time_scale: float = Field(1.0, gt=0)
    # KV events are collected only when enabled (they cost time on the step path)
    kv_events: bool = False
    # vision-language (kvroute_sim.vision): encoder seconds per image token, encoder cache size
    encoder_s_per_token: float = Field(0.0, ge=0)
    encoder_cache_items: int = Field(2048, ge=0)

    @model_validator(mode="after")
    def _check(self) -> EngineConfig:
        if len(self.linear_table) < 2:
            raise ValueError("linear_table needs at least two points")
        xs = [x for x, _ in self.linear_table]
        if xs != sorted(xs) or len(set(xs)) != len(xs):
            raise ValueError("linear_table token counts must be strictly increasing")
        if not self.chunked_prefill and self.max_num_batched_tokens < self.max_model_len:
            raise ValueError(
                "without chunked prefill max_num_batched_tokens must be >= max_model_len"
            )
        if self.num_gpu_blocks * self.block_size < self.max_model_len:
            raise ValueError("the KV cache must hold at least one max_model_len sequence")
        return self


MetricsFlavour = Literal["vllm", "vllm-legacy", "sglang"]


class FaultConfig(BaseModel):
    """Faults a server injects (also settable at run time through ``POST /admin/faults``)."""

    model_config = ConfigDict(extra="forbid")

    error_rate: float = Field(0.0, ge=0, le=1)  # fraction of generation requests answered 500
    hang: bool = False  # generation requests never answer
    close_mid_stream_after: int | None = Field(None, ge=0)  # drop the connection after k chunks
    metrics_delay_s: float = Field(0.0, ge=0)
    metrics_garbage: bool = False
    dead: bool = False  # every request: connection closed without an answer


class ServerConfig(BaseModel):
    """One simulated server: what it serves and how it presents itself."""

    model_config = ConfigDict(extra="forbid")

    model: str = "meta-llama/Llama-3.1-8B-Instruct"
    loras: tuple[str, ...] = ()
    profile: str = "h100-llama3-8b"
    engine: EngineConfig = EngineConfig()
    metrics_flavour: MetricsFlavour = "vllm"
    kv_events_endpoint: str | None = None  # e.g. "tcp://127.0.0.1:5557"; None = off
    kv_events_topic: str = "kv@127.0.0.1@{model}"
    default_chat_max_tokens: int = Field(256, ge=1)
    tokenizer: str | None = None  # a HF tokenizer.json (or its directory); None = word pieces
    faults: FaultConfig = FaultConfig()
    tracing_endpoint: str | None = None  # OTLP/gRPC collector, e.g. "http://127.0.0.1:4317"
    # P/D disaggregation (kvroute_sim.disagg): the engine role, the KV link it pulls over, and
    # the model shape that sets the KV bytes per token.
    role: Role = "both"
    kv_link: Literal["nvlink", "rdma", "tcp"] = "rdma"
    kv_shape: KVShape = KVShape()


def _profiles() -> dict[str, dict[str, Any]]:
    return {
        # Calibrated against vllm-performance-model.md §2.4 (see docs/simulator.md).
        "h100-llama3-8b": {},
        # Small and fast for unit tests: tiny KV, short steps, no API overhead.
        "tiny": {
            "max_num_seqs": 8,
            "max_num_batched_tokens": 256,
            "max_model_len": 512,
            "num_gpu_blocks": 64,
            "max_loras": 2,
            "max_cpu_loras": 3,
            "api_overhead_s": 0.0,
            "lora_cold_load_s": 0.004,
            "lora_gpu_load_s": 0.001,
            "linear_table": ((1, 1e-3), (256, 2e-3)),
            "t_fix": 0.0,
            "c_seq": 0.0,
            "c_kv": 0.0,
            "c_att": 0.0,
        },
        # The calibrated engine slowed x10, so a 2-core box keeps real time honest.
        "slow": {"time_scale": 10.0},
        # A Qwen2.5-VL-7B-class server (kvroute_sim.vision; an approximation, see there): the
        # calibrated language model plus a vision encoder and its cache, a longer context.
        "vision": {"encoder_s_per_token": 15e-6, "max_model_len": 16384},
        # The vision profile on the tiny engine, for tests.
        "tiny-vision": {
            "max_num_seqs": 8,
            "max_num_batched_tokens": 2048,
            "max_model_len": 4096,
            "num_gpu_blocks": 1024,
            "api_overhead_s": 0.0,
            "linear_table": ((1, 1e-3), (2048, 4e-3)),
            "t_fix": 0.0,
            "c_seq": 0.0,
            "c_kv": 0.0,
            "c_att": 0.0,
            "encoder_s_per_token": 20e-6,
            "encoder_cache_items": 64,
        },
    }


PROFILE_NAMES: tuple[str, ...] = tuple(_profiles())


def engine_profile(name: str, **overrides: Any) -> EngineConfig:
    """The ``EngineConfig`` of a named profile, with field overrides applied."""
    profiles = _profiles()
    if name not in profiles:
        raise ValueError(f"unknown profile {name!r}; known: {', '.join(profiles)}")
    return EngineConfig(**{**profiles[name], **overrides})


def load_server_config(path: str | Path | None = None, **overrides: Any) -> ServerConfig:
    """A ``ServerConfig`` from an optional YAML file plus keyword overrides.

    The YAML may name a ``profile`` and give an ``engine`` mapping of overrides on top of it.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping at the top level")
        raw = loaded
    raw.update({k: v for k, v in overrides.items() if v is not None})
    profile = str(raw.get("profile", "h100-llama3-8b"))
    engine_raw = raw.get("engine") or {}
    if isinstance(engine_raw, EngineConfig):
        engine = engine_raw
    else:
        engine = engine_profile(profile, **dict(engine_raw))
    return ServerConfig(**{**raw, "profile": profile, "engine": engine})
