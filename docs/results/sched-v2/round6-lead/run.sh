#!/bin/bash
# Issue 11, sixth round (lead): the candidates of "Scheduler v2, sixth round: the default
# changed". Run from the repository root at commit 4f099a1's sources (text12's bench text, the
# default with session-affinity weight 3); each call writes <dir>/<name>.{json,md,png}.
# kvroute = that default; PF3/PF4 = prefill-load-scorer weight 3/4; S2PF3 = session weight 2 + PF3.
set -e
D=docs/results/sched-v2/round6-lead
r() { out=$1; shift; kvroute bench cluster --replicas 10 --duration 30 --drain 60 "$@" --out $D/$out --quiet; }
r mt-var --preset multi-turn --qps-sweep 202.5,405 --seed 1 \
  --policies kvroute,llm-d-token-aware,config:$D/T2.yaml,config:$D/P4.yaml,config:$D/PF3.yaml,config:$D/Q0.yaml
P=kvroute,config:$D/PF3.yaml,config:$D/PF4.yaml
for s in 1 2 3; do
  r pf/mt405-s$s --preset multi-turn --qps-sweep 202.5,405 --seed $s --policies $P
  r pf/ag399-s$s --preset agent-sessions --qps-sweep 199.5,399 --seed $s --policies $P
  r pf/het-s$s --preset heterogeneous --qps-sweep 204.2,408.4 --seed $s --policies $P
  r pf/sg-s$s --preset sharegpt --qps-sweep 251,502 --seed $s --policies $P
  r pf3/mt405-s$s --preset multi-turn --qps-sweep 202.5,405 --seed $s --policies config:$D/S2PF3.yaml
  r pf3/ag399-s$s --preset agent-sessions --qps-sweep 199.5,399 --seed $s --policies config:$D/S2PF3.yaml
done
# seed 1 with kvroute,PF3,PF4 (pf/), seeds 2-3 with PF3 only (pf2/): every other preset, e.g.
#   r pf/cg-s1 --preset code-generation --qps-sweep 106.5,213 --seed 1 --policies $P
#   r pf2/cg-s2 --preset code-generation --qps-sweep 106.5,213 --seed 2 --policies config:$D/PF3.yaml
# (loads as in docs/results/sched-v2/seeds/*.md; shared-prefix and shared-prefix-low with
#  --engine max_model_len=16384 --duration 40 --drain 90; multi-lora with its engine options)
