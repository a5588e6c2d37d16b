#!/usr/bin/env bash
# Scheduler v2 baselines (docs/benchmarks.md, "Scheduler v2 baselines"): every preset, all policies
# in the same run, h100-llama3-8b, 10 replicas, 50% -> 100% of saturation (probed per preset).
#   docs/results/v2/run.sh                 # every preset
#   docs/results/v2/run.sh reasoning ...   # some presets
#   POLICIES=...,upstream-default,... OUT=docs/results/v2-after docs/results/v2/run.sh
#   DURATION=20 FRACTIONS=0.5,1.0 docs/results/v2/run.sh multi-turn   # shorter (see the docs)
set -euo pipefail
POLICIES=${POLICIES:-round-robin,least-requests,p2c,sglang-cache-aware,llm-d-token-aware,kvroute,oracle}
OUT=${OUT:-docs/results/v2}
DURATION=${DURATION:-30}
FRACTIONS=${FRACTIONS:-0.5,0.75,1.0}
ALL=(sharegpt bursty shared-prefix shared-prefix-low shared-prefix-sglang multi-turn multi-lora
     mixed-criticality heterogeneous heterogeneous-datacenter sharegpt-heavy agent-sessions code-generation reasoning)
extra() {
  case "$1" in
    shared-prefix|shared-prefix-low) echo "--engine max_model_len=16384 --drain 120" ;;
    multi-lora) echo "--param num_adapters=15 --engine max_loras=3 --engine max_cpu_loras=6" ;;
    *) echo "" ;;
  esac
}
mkdir -p "$OUT"
for p in "${@:-${ALL[@]}}"; do
  # shellcheck disable=SC2046
  kvroute bench cluster --preset "$p" $(extra "$p") --replicas 10 --saturation auto \
    --load-fractions "$FRACTIONS" --duration "$DURATION" --seed 1 --policies "$POLICIES" \
    --quiet --out "$OUT/$p"
done
