#!/bin/bash
# The virtual-time runs for one source tree: vt.sh SRC OUTDIR. Two trees' outputs differ only
# in wall-clock fields when decisions are the same: vtdiff.sh OUT_A OUT_B.
SRC=$(realpath "$1"); OUT=$2; mkdir -p "$OUT"
K=${KVROUTE:-$(realpath .venv/bin/kvroute)}
A="--replicas 10 --duration 20 --seed 1 --policies kvroute"
run() { name=$1; shift; (cd /tmp && PYTHONPATH=$SRC $K bench cluster $A "$@") > "$OUT/$name.txt" 2>&1; }
run multi-turn --preset multi-turn --qps-sweep 405
run multi-lora --preset multi-lora --param num_adapters=15 --engine max_loras=3 --engine max_cpu_loras=6 --qps-sweep 129
run heterogeneous --preset heterogeneous --qps-sweep 408.4
run shared-prefix --preset shared-prefix --engine max_model_len=16384 --qps-sweep 16
run agent-sessions --preset agent-sessions --qps-sweep 399
