#!/bin/sh
# Issue 11, fifth round: the non-LoRA stages that could move, default vs LoRA weight 8
K="kvroute bench cluster --replicas 10 --duration 30 --seed 1"
R=docs/results/sched-v2/round5
P=kvroute,config:$R/lw8.yaml
O=${O:-/tmp/lora11}
$K --preset multi-turn --qps-sweep 405 --policies $P --out $O/mt405
$K --preset shared-prefix-sglang --qps-sweep 165 --policies $P --out $O/sps165
$K --preset agent-sessions --qps-sweep 399 --policies $P --out $O/as399
$K --preset heterogeneous --qps-sweep 408.4 --policies $P --out $O/het408
$K --preset sharegpt --qps-sweep 502 --policies $P --out $O/sg502
