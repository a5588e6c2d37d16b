#!/bin/bash
# Alternates the scheduler bench over the base sources and this checkout's, with this
# checkout's bench file for both. Run from the repository root.
#   git archive da6e3da src tests docs examples | (mkdir -p /tmp/base && tar -x -C /tmp/base)
#   BASE_SRC=/tmp/base/src docs/results/decision-cost-r6/ab.sh 2
BASE_SRC=${BASE_SRC:-/tmp/base/src}
PY=${PY:-.venv/bin}
K='(default-100 or default-warm-100 or default-lora-100 or default-busy-100 or default-fresh-100 or upstream-100 or director) and not 1000'
for r in $(seq "${1:-1}"); do
  for side in base new; do
    if [ $side = base ]; then SRC=$BASE_SRC; else SRC=src; fi
    echo "== $side round $r load $(cut -d' ' -f1-3 /proc/loadavg)"
    PYTHONPATH=$SRC $PY/pytest -q -p no:cacheprovider -m bench --benchmark-enable \
      --benchmark-columns=min,median tests/bench/test_scheduler_bench.py -k "$K" 2>&1 |
      grep '^test_' | sed 's/ ([0-9.]*)//g;s/  */ /g'
  done
done
