"""Run from the repository root: PYTHONPATH=<src> python docs/results/decision-cost-r6/plugins.py

Per-plugin median µs (PluginTimings, as the EPP records them) for the default profile at
100 endpoints: cold (empty index), warm (prompt on every tenth endpoint), busy (requests in
flight everywhere); plus the PrepareData hook timed around its call."""
import sys, time, statistics
sys.path.insert(0, "tests/bench")
import test_scheduler_bench as b
from kvroute.scheduling.interfaces import CycleState

def case(name):
    if name == "warm":
        setup, eps = b._warm(None, 100)
    else:
        setup = b._setup(None); eps = b._endpoints(100)
        if name == "busy":
            eps = b._busy(eps)
    one = b._cycle(setup, eps)
    for _ in range(1000): one()
    setup.timings.drain()
    for _ in range(4000): one()
    out = {k.plugin_name: statistics.median(v) * 1e6 for k, v in setup.timings.drain().items()}
    hook = setup.plugins["prefix-cache-scorer"]; req = b._request(); ts = []
    for _ in range(4000):
        st = CycleState(b.NOW); t0 = time.perf_counter(); hook.prepare_data(st, req, eps); ts.append(time.perf_counter() - t0)
    out["PrepareData (prefix)"] = statistics.median(ts) * 1e6
    return out

res = {c: case(c) for c in ("cold", "warm", "busy")}
for k in res["cold"]:
    print(f"{k:30s}" + "".join(f"{res[c].get(k, float('nan')):8.1f}" for c in res))
