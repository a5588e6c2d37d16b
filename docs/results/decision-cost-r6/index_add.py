"""PrefixIndex.add before (copied here) and now, on a replay of 50 five-turn conversations.

Run from the repository root: PYTHONPATH=src python docs/results/decision-cost-r6/index_add.py
"""

import random
import timeit
from collections import OrderedDict

from kvroute.scheduling.plugins.prefix.holders import add_holder
from kvroute.scheduling.plugins.prefix.index import PrefixIndex


def add_before(self, server, hashes):  # the base commit's PrefixIndex.add
    lru = self._lru.get(server)
    if lru is None:
        lru = self._lru[server] = OrderedDict()
    index = self._hash_to_servers
    for h in hashes:
        if h in lru:
            lru.move_to_end(h)
            continue
        lru[h] = None
        add_holder(index, h, server)
    self._evict_to(server, lru, self.capacity(server))


rng = random.Random(1)
chains = [[rng.getrandbits(64) for _ in range(250)] for _ in range(50)]


def replay(add):
    idx = PrefixIndex(31250)
    for i, chain in enumerate(chains):
        for turn in range(5):  # each turn a longer prefix of the chain, on one of ten servers
            add(idx, f"s{i % 10}", chain[: 50 * (turn + 1)])
    return idx


a, b = replay(add_before), replay(PrefixIndex.add)
assert a._hash_to_servers == b._hash_to_servers
assert {k: list(v) for k, v in a._lru.items()} == {k: list(v) for k, v in b._lru.items()}
for _ in range(2):
    for name, f in (("before", add_before), ("now", PrefixIndex.add)):
        best = min(timeit.repeat(lambda f=f: replay(f), number=5, repeat=5)) / 5
        print(f"{name:6s} {best * 1e3:.2f} ms per replay")
