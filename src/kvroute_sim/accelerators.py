"""Accelerator profiles: other GPUs as factors on the calibrated ``h100-llama3-8b`` engine.

Only the H100 profile is calibrated (``docs/simulator.md``). The others are **approximations**
derived from public spec-sheet ratios against the H100 SXM, applied to the parts of the step-time
formula each resource bounds:

- the weight-bound floor of a step (``T_lin(1)``, the time to stream the weights once) and the
  per-context KV read ``c_kv`` scale with **HBM bandwidth** (``mem_factor = 3.35 / bw``);
- the rest of the linear-layer curve (``T_lin(N) - T_lin(1)``, compute-bound past ~512 tokens) and
  the prefill attention ``c_att`` scale with **dense BF16 tensor FLOPS** (``compute_factor =
  989 / tflops``);
- the fixed per-step cost, per-sequence cost and eager overhead (CPU and launch work) and the
  API-server overhead are left unchanged;
- the KV cache (``num_gpu_blocks``) scales with the memory left after the 16.06 GB of Llama-3-8B
  BF16 weights at vLLM's default ``gpu_memory_utilization`` 0.9: ``(0.9*HBM - 16.06) /
  (0.9*80 - 16.06)`` times the H100's 27000 blocks.

Scheduler budgets (``max_num_seqs``, ``max_num_batched_tokens``) are kept, so the profiles differ
in speed and KV capacity only. Real ratios depend on kernels, clocks and software maturity (MI300X
under ROCm in particular reaches a smaller fraction of its peak); treat these as plausible
orders of magnitude, not measurements.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvroute_sim.config import EngineConfig

# The reference the factors are relative to: H100 SXM5 80 GB.
_REF_BW_TBS = 3.35
_REF_TFLOPS = 989.0
_REF_HBM_GB = 80.0
_WEIGHTS_GB = 16.06  # Llama-3-8B in BF16
_GPU_MEM_UTIL = 0.9  # vLLM's default gpu_memory_utilization


@dataclass(frozen=True, slots=True)
class Accelerator:
    """Public spec-sheet figures of one accelerator (dense BF16, no sparsity)."""

    name: str
    mem_bw_tbs: float  # HBM/GDDR bandwidth, TB/s
    bf16_tflops: float  # dense BF16 tensor TFLOPS
    hbm_gb: float  # device memory, GB
    source: str

    @property
    def mem_factor(self) -> float:
        """Multiplier on weight- and KV-bandwidth-bound time (> 1 = slower than an H100)."""
        return _REF_BW_TBS / self.mem_bw_tbs

    @property
    def compute_factor(self) -> float:
        """Multiplier on compute-bound time (> 1 = slower than an H100)."""
        return _REF_TFLOPS / self.bf16_tflops

    @property
    def kv_factor(self) -> float:
        """KV-cache capacity relative to the H100 profile's."""
        ref = _GPU_MEM_UTIL * _REF_HBM_GB - _WEIGHTS_GB
        return max(0.0, _GPU_MEM_UTIL * self.hbm_gb - _WEIGHTS_GB) / ref


ACCELERATORS: dict[str, Accelerator] = {
    a.name: a
    for a in (
        Accelerator("h100", 3.35, 989.0, 80.0, "NVIDIA H100 SXM5 datasheet"),
        Accelerator("h200", 4.8, 989.0, 141.0, "NVIDIA H200 SXM datasheet"),
        Accelerator("a100", 2.039, 312.0, 80.0, "NVIDIA A100 80GB SXM datasheet"),
        Accelerator("l4", 0.3, 121.0, 24.0, "NVIDIA L4 datasheet (242 TFLOPS is with sparsity)"),
        Accelerator("mi300x", 5.3, 1307.0, 192.0, "AMD Instinct MI300X datasheet"),
    )
}


def accelerator(name: str) -> Accelerator:
    key = name.strip().lower()
    if key not in ACCELERATORS:
        raise ValueError(f"unknown accelerator {name!r}; known: {', '.join(ACCELERATORS)}")
    return ACCELERATORS[key]


def on_accelerator(cfg: EngineConfig, name: str) -> EngineConfig:
    """``cfg`` (an H100-calibrated engine) as it would run on accelerator ``name``."""
    acc = accelerator(name)
    if acc.name == "h100":
        return cfg
    mem, comp = acc.mem_factor, acc.compute_factor
    floor = cfg.linear_table[0][1]
    table = tuple((n, floor * mem + (t - floor) * comp) for n, t in cfg.linear_table)
    blocks = int(cfg.num_gpu_blocks * acc.kv_factor)
    min_blocks = -(-cfg.max_model_len // cfg.block_size)
    return cfg.model_copy(
        update={
            "linear_table": table,
            "c_kv": cfg.c_kv * mem,
            "c_att": cfg.c_att * comp,
            "num_gpu_blocks": max(min_blocks, blocks),
        }
    )


def parse_pool(spec: str | list[str] | tuple[str, ...], replicas: int | None = None) -> list[str]:
    """Accelerator names per replica from ``"h100:4,l4:3,a100"`` (or a list of such items).

    ``name:count`` repeats a name; a bare name counts once. With ``replicas`` the list is cycled
    (or cut) to that length, so ``"h100,l4"`` over 10 replicas alternates.
    """
    items = [spec] if isinstance(spec, str) else list(spec)
    names: list[str] = []
    for item in items:
        for part in item.split(","):
            part = part.strip()
            if not part:
                continue
            name, _, count = part.partition(":")
            n = int(count) if count else 1
            if n < 0:
                raise ValueError(f"negative count in pool spec {part!r}")
            names.extend([accelerator(name).name] * n)
    if not names:
        raise ValueError(f"empty accelerator pool spec {spec!r}")
    if replicas is not None:
        names = [names[i % len(names)] for i in range(replicas)]
    return names
