#!/bin/sh
# Issue 11, fifth round: the non-LoRA stages that could move, old default (default.yaml) vs new (LoRA weight 8)
K="kvroute bench cluster --replicas 10 --duration 30 --seed 1"
R=docs/results/sched-v2/round5
P=config:$R/default.yaml,kvroute   # the fourth-round default as a file vs the new default (weight 8)
O=${O:-/tmp/lora11}
$K --preset multi-turn --qps-sweep 405 --policies $P --out $O/b-mt405
$K --preset shared-prefix-sglang --qps-sweep 165 --policies $P --out $O/b-sps165
$K --preset agent-sessions --qps-sweep 399 --policies $P --out $O/b-as399
$K --preset heterogeneous --qps-sweep 408.4 --policies $P --out $O/b-het408
$K --preset sharegpt --qps-sweep 502 --policies $P --out $O/b-sg502
