#!/bin/bash
# vtdiff.sh OUT_A OUT_B: compare vt.sh outputs without the wall-clock fields (the table's last
# column, dec µs p50, and the "wall_s" / "decision_us_*" lines).
strip() { sed -E 's/│ +[0-9.]+ │$/│ X │/; /"(wall_s|decision_us_[a-z0-9_]*)"/d' "$1"; }
for f in multi-turn multi-lora heterogeneous shared-prefix agent-sessions; do
  if diff <(strip "$1/$f.txt") <(strip "$2/$f.txt") > /dev/null; then
    echo "$f: identical (wall-clock fields aside)"
  else
    echo "$f: DIFFERS"
  fi
done
