#!/bin/sh
# Issue 11, fifth round: multi-LoRA candidates (run from the repository root, one stage set at a time)
K="kvroute bench cluster --replicas 10 --duration 30"
R=docs/results/sched-v2/round5
P=kvroute,config:$R/lw6.yaml,config:$R/lw8.yaml,config:$R/lw12.yaml
L="--preset multi-lora --param num_adapters=15 --engine max_loras=3 --engine max_cpu_loras=6"
O=${O:-/tmp/lora11}
$K --seed 1 $L --qps-sweep 64.5,129 --policies $P --out $O/lora-s1
$K --seed 1 $L --qps-sweep 250,300 --policies $P --out $O/lora-hi-s1
$K --seed 2 $L --qps-sweep 64.5,129 --policies $P --out $O/lora-s2
$K --seed 3 $L --qps-sweep 64.5,129 --policies $P --out $O/lora-s3
