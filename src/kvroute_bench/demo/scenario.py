"""What the demo runs: the resources a user would write, the scheduler config, and the workload.

The workload mixes three kinds of traffic on one pool, the situations an inference gateway is for:

* **critical chat** (``assistant``, an InferenceModel with ``criticality: Critical``): a few
  long shared system prompts, short questions, short answers; prefix affinity pays here;
* **standard LoRA traffic** (``sql-assistant``, and ``review`` split 90/10 between two adapter
  versions, a canary): more adapters than each server has batch slots, so adapter affinity pays;
* **sheddable batch** (``batch-summarize``, ``batch-translate``, ``criticality: Sheddable``): long
  prompts and answers that may be dropped with 429 when the pool is saturated.

Round-robin gets exactly the same requests, addressed to the target model names directly (what a
client behind a plain Kubernetes Service would have to send), and has no way to shed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from kvroute.embed import KVROUTE_DEFAULT_CONFIG_TEXT
from kvroute.sdk import Criticality
from kvroute_bench.workload import BenchRequest

BASE_MODEL = "meta-llama/Llama-3.1-8B-Instruct"
ADAPTERS = ("sql-lora", "review-lora-v1", "review-lora-v2", "summarize-lora", "translate-lora")

_POOL_YAML = """\
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {name: demo-pool}
spec:
  selector:
    matchLabels: {app: kvroute-sim}
  targetPorts: [{number: 8000}]
  endpointPickerRef: {name: demo-epp, port: {number: 9002}, failureMode: FailClose}
"""

# kvroute's default profile as is (since scheduler v2 it has LoRA affinity on, neutral for
# base-model traffic): this pool serves more adapters than it has slots.
EPP_CONFIG_YAML = KVROUTE_DEFAULT_CONFIG_TEXT

# Simulated servers: the calibrated H100/Llama-3-8B engine slowed x10 (so real time on two
# shared cores stays honest), two adapter slots per batch, four resident adapters.
SIM_CONFIG_YAML = f"""\
profile: slow
model: {BASE_MODEL}
loras: [{", ".join(ADAPTERS)}]
engine:
  max_loras: 2
  max_cpu_loras: 4
"""

# client-facing model -> (targets with weights, criticality); mirrors RESOURCES_YAML
MODELS: dict[str, tuple[tuple[tuple[str, int], ...], Criticality]] = {
    "assistant": (((BASE_MODEL, 1),), Criticality.CRITICAL),
    "sql-assistant": ((("sql-lora", 1),), Criticality.STANDARD),
    "review": ((("review-lora-v1", 90), ("review-lora-v2", 10)), Criticality.STANDARD),
    "batch-summarize": ((("summarize-lora", 1),), Criticality.SHEDDABLE),
    "batch-translate": ((("translate-lora", 1),), Criticality.SHEDDABLE),
}

CRITICAL_TTFT_SLO = 1.5  # seconds, for the slowed (x10) engine


def _model_yaml(name: str, targets: tuple[tuple[str, int], ...], crit: Criticality) -> str:
    lines = "".join(f"  - {{name: {t}, weight: {w}}}\n" for t, w in targets)
    return (
        "apiVersion: inference.networking.x-k8s.io/v1alpha2\n"
        f"kind: InferenceModel\nmetadata: {{name: {name}}}\nspec:\n"
        f"  modelName: {name}\n  criticality: {crit.value}\n  targetModels:\n{lines}"
        "  poolRef: {group: inference.networking.k8s.io, kind: InferencePool, name: demo-pool}\n"
    )


# The multi-document file a user would `kubectl apply`: the pool and one InferenceModel per entry.
RESOURCES_YAML = "---\n".join(
    [_POOL_YAML, *(_model_yaml(n, targets, crit) for n, (targets, crit) in MODELS.items())]
)


@dataclass(frozen=True, slots=True)
class DemoWorkload:
    rate: float = 10.0  # requests per second
    duration: float = 30.0  # seconds of arrivals
    seed: int = 7
    system_prompts: int = 4
    system_prompt_len: int = 600
    critical_fraction: float = 0.4
    lora_fraction: float = 0.3  # the rest is sheddable batch


def generate(w: DemoWorkload) -> list[BenchRequest]:
    """Poisson arrivals over ``[0, duration)``; deterministic for ``seed``.

    Prompts are token ids rendered as words (``BenchRequest.text``); shared system prompts share
    their ids, everything else draws fresh ids, so only the intended prefixes are shared.
    """
    rng = random.Random(w.seed)
    next_id = iter(range(1_000_000, 1 << 30))

    def fresh(n: int) -> tuple[int, ...]:
        return tuple(next(next_id) for _ in range(n))

    systems = [fresh(w.system_prompt_len) for _ in range(w.system_prompts)]
    out: list[BenchRequest] = []
    t = 0.0
    i = 0
    while True:
        t += rng.expovariate(w.rate)
        if t >= w.duration:
            return out
        u = rng.random()
        if u < w.critical_fraction:
            g = rng.randrange(w.system_prompts)
            req = BenchRequest(
                f"r{i}",
                t,
                systems[g] + fresh(rng.randint(30, 90)),
                rng.randint(40, 100),
                "assistant",
                Criticality.CRITICAL,
                CRITICAL_TTFT_SLO,
                f"system-{g}",
            )
        elif u < w.critical_fraction + w.lora_fraction:
            model = rng.choice(("sql-assistant", "review"))
            req = BenchRequest(
                f"r{i}",
                t,
                fresh(rng.randint(100, 300)),
                rng.randint(60, 150),
                model,
                Criticality.STANDARD,
                None,
                model,
            )
        else:
            model = rng.choice(("batch-summarize", "batch-translate"))
            req = BenchRequest(
                f"r{i}",
                t,
                fresh(rng.randint(600, 1000)),
                rng.randint(150, 250),
                model,
                Criticality.SHEDDABLE,
                None,
                model,
            )
        out.append(req)
        i += 1


def for_round_robin(requests: list[BenchRequest], seed: int) -> list[BenchRequest]:
    """The same requests addressed to target model names (weighted split drawn client-side)."""
    rng = random.Random(seed + 1)
    out = []
    for r in requests:
        targets, _crit = MODELS[r.adapter or "assistant"]
        names = [name for name, _w in targets]
        weights = [weight for _n, weight in targets]
        target = rng.choices(names, weights)[0]
        out.append(replace(r, adapter=None if target == BASE_MODEL else target))
    return out
