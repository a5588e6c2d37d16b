"""Run from the repository root: PYTHONPATH=<src> python docs/results/decision-cost-r6/mem.py

Memory of the default profile per endpoint (tracemalloc): persistent state after cycles over
N endpoints with an empty prefix index, and the transient peak of one cycle."""
import sys, tracemalloc, random, dataclasses
sys.path.insert(0, "tests/bench")
import test_scheduler_bench as b
from kvroute.scheduling.interfaces import CycleState

def persistent(n: int, num_blocks: int) -> int:
    eps = tuple(dataclasses.replace(e, metrics=dataclasses.replace(e.metrics, cache_num_blocks=num_blocks)) for e in b._endpoints(n))
    setup = b._setup(None)
    one = b._cycle(setup, eps)
    one()  # first cycle: imports/caches warmed, nothing per endpoint yet? (it is: _observe)
    setup.timings.drain()
    tracemalloc.start()
    base = tracemalloc.take_snapshot()
    # a new tuple of the same endpoints (a scrape replaced the snapshot) then cycles
    eps2 = tuple(eps)
    one2 = b._cycle(setup, eps2)
    for _ in range(3): one2()
    setup.timings.drain()
    snap = tracemalloc.take_snapshot()
    tracemalloc.stop()
    return sum(s.size_diff for s in snap.compare_to(base, "filename"))

def fresh_persistent(n: int, num_blocks: int) -> int:
    eps = tuple(dataclasses.replace(e, metrics=dataclasses.replace(e.metrics, cache_num_blocks=num_blocks)) for e in b._endpoints(n))
    setup = b._setup(None)
    warm = b._cycle(setup, b._endpoints(1)); warm(); setup.timings.drain()
    one = b._cycle(setup, eps)
    tracemalloc.start()
    s0 = tracemalloc.take_snapshot()
    one(); setup.timings.drain()
    s1 = tracemalloc.take_snapshot()
    tracemalloc.stop()
    return sum(s.size_diff for s in s1.compare_to(s0, "filename"))

def peak(n: int) -> int:
    setup = b._setup(None)
    eps = b._endpoints(n)
    one = b._cycle(setup, eps)
    for _ in range(3): one()
    setup.timings.drain()
    tracemalloc.start()
    tracemalloc.reset_peak()
    cur0, _ = tracemalloc.get_traced_memory()
    one()
    cur1, pk = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return pk - cur0

for nb in (0, 4096):
    a, c = fresh_persistent(100, nb), fresh_persistent(1000, nb)
    print(f"num_blocks={nb}: state kept after the first cycle: 100 eps {a} B, 1000 eps {c} B -> {(c - a) / 900:.0f} B/endpoint")
a, c = peak(100), peak(1000)
print(f"transient peak of one cycle: 100 eps {a} B, 1000 eps {c} B -> {(c - a) / 900:.0f} B/endpoint")
