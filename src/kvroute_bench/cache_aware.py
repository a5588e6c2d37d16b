"""An sglang-router ``cache_aware`` baseline, written from its published description.

Source: the description in ``peer-routers.md`` §4 (sgl-router / SMG ``policies/cache_aware.rs``,
HTTP mode with its character ``StringTree``); no code was copied. Per request:

1. **Balance check.** Load is the router's own in-flight count per worker. The pool counts as
   imbalanced iff ``max - min > balance_abs_threshold`` AND ``max > balance_rel_threshold *
   min``; then the request goes to the least-loaded worker (its text is still inserted into the
   tree for that worker).
2. **Cache affinity.** Otherwise the request text is matched against one radix tree over request
   text shared by all workers, each node tagged with the workers ("tenants") whose past requests
   passed through it. If the longest match covers more than ``cache_threshold`` of the text, the
   request goes to a worker holding that match (the one that touched it most recently: our
   choice, the description does not say); else to the worker whose tree is **smallest**
   (fewest characters).
3. The text is inserted for the chosen worker. Every ``eviction_interval`` seconds each worker's
   share of the tree is trimmed to ``max_tree_size`` characters, least recently used leaves first.

Defaults are the CLI's (sgl-router and SMG): ``cache_threshold`` 0.3, ``balance_abs_threshold``
64, ``balance_rel_threshold`` 1.5, eviction every 120 s, ``max_tree_size`` 2^26. There is one
tree per model (the adapter name, or the base model), as the router keeps one per model. The
text is :meth:`BenchRequest.text` (one word per token), the same text kvroute's scorer sees.
"""

from __future__ import annotations

import heapq

from kvroute_bench.pool import PoolView
from kvroute_bench.workload import BenchRequest


class _Node:
    __slots__ = ("children", "label", "parent", "tenants")

    def __init__(self, label: str, parent: _Node | None) -> None:
        self.label = label
        self.parent = parent
        self.children: dict[str, _Node] = {}
        self.tenants: dict[int, float] = {}  # tenant -> last access time


def _common(label: str, text: str, i: int) -> int:
    """Length of the common prefix of ``label`` and ``text[i:]`` (C-speed comparisons)."""
    if text.startswith(label, i):
        return len(label)
    lo, hi = 0, min(len(label), len(text) - i)  # invariant: lo chars match, hi+1 do not
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if text.startswith(label[:mid], i):
            lo = mid
        else:
            hi = mid - 1
    return lo


class RadixTree:
    """A character radix tree shared by tenants (replicas); children of a node belong to a
    subset of its tenants, so the deepest matched node names every tenant holding the match."""

    def __init__(self) -> None:
        self.root = _Node("", None)
        self.size: dict[int, int] = {}  # tenant -> characters it holds

    def insert(self, text: str, tenant: int, now: float) -> None:
        node = self.root
        node.tenants[tenant] = now
        self.size.setdefault(tenant, 0)
        i = 0
        while i < len(text):
            child = node.children.get(text[i])
            if child is None:
                leaf = _Node(text[i:], node)
                leaf.tenants[tenant] = now
                node.children[text[i]] = leaf
                self.size[tenant] += len(text) - i
                return
            k = _common(child.label, text, i)
            if k < len(child.label):
                child = self._split(child, k)
            if tenant not in child.tenants:
                self.size[tenant] += len(child.label)
            child.tenants[tenant] = now
            node = child
            i += k

    @staticmethod
    def _split(child: _Node, k: int) -> _Node:
        """Cut ``child``'s edge after ``k`` characters; return the new upper node."""
        parent = child.parent
        assert parent is not None
        mid = _Node(child.label[:k], parent)
        mid.tenants = dict(child.tenants)
        parent.children[child.label[0]] = mid
        child.label = child.label[k:]
        child.parent = mid
        mid.children[child.label[0]] = child
        return mid

    def match(self, text: str) -> tuple[int, dict[int, float]]:
        """(characters of ``text`` matched, the tenants holding that whole match)."""
        node = self.root
        tenants = node.tenants
        i = 0
        while i < len(text):
            child = node.children.get(text[i])
            if child is None:
                break
            k = _common(child.label, text, i)
            i += k
            tenants = child.tenants
            if k < len(child.label):
                break
            node = child
        return i, tenants

    def evict(self, tenant: int, max_size: int) -> None:
        """Drop ``tenant``'s least recently used leaves until it holds ``max_size`` chars."""
        if self.size.get(tenant, 0) <= max_size:
            return
        heap: list[tuple[float, int, _Node]] = []
        stack = [self.root]
        while stack:
            node = stack.pop()
            owned = [c for c in node.children.values() if tenant in c.tenants]
            if not owned and node is not self.root:
                heap.append((node.tenants[tenant], id(node), node))
            stack.extend(owned)
        heapq.heapify(heap)
        while heap and self.size[tenant] > max_size:
            _t, _id, node = heapq.heappop(heap)
            del node.tenants[tenant]
            self.size[tenant] -= len(node.label)
            parent = node.parent
            assert parent is not None
            if not node.tenants:
                del parent.children[node.label[0]]
            if parent is not self.root and not any(
                tenant in c.tenants for c in parent.children.values()
            ):
                heapq.heappush(heap, (parent.tenants[tenant], id(parent), parent))


class SglangCacheAwareRouter:
    """sglang-router's ``cache_aware`` policy (see the module docstring)."""

    name = "sglang-cache-aware"

    def __init__(
        self,
        seed: int,
        *,
        cache_threshold: float = 0.3,
        balance_abs_threshold: int = 64,
        balance_rel_threshold: float = 1.5,
        eviction_interval: float = 120.0,
        max_tree_size: int = 1 << 26,
    ) -> None:
        del seed  # the policy is deterministic
        self.cache_threshold = cache_threshold
        self.balance_abs_threshold = balance_abs_threshold
        self.balance_rel_threshold = balance_rel_threshold
        self.eviction_interval = eviction_interval
        self.max_tree_size = max_tree_size
        self.trees: dict[str, RadixTree] = {}
        self._text: tuple[str, str] = ("", "")
        self._last_eviction = 0.0
        self.branches = {"imbalanced": 0, "cache_hit": 0, "smallest_tree": 0}

    def prepare(self, request: BenchRequest) -> None:
        """Render the text (the client's work; untimed by the harness)."""
        self._text = (request.request_id, request.text())

    def imbalanced(self, loads: list[int]) -> bool:
        hi, lo = max(loads), min(loads)
        return hi - lo > self.balance_abs_threshold and hi > self.balance_rel_threshold * lo

    def pick(self, request: BenchRequest, pool: PoolView, now: float) -> int | None:
        if self._text[0] != request.request_id:
            self.prepare(request)
        text = self._text[1]
        tree = self.trees.setdefault(request.adapter or "", RadixTree())
        if now - self._last_eviction >= self.eviction_interval:
            self._last_eviction = now
            for t in self.trees.values():
                for tenant in list(t.size):
                    t.evict(tenant, self.max_tree_size)
        n = len(pool)
        loads = [e.load.inflight for e in pool.endpoints]
        if self.imbalanced(loads):
            choice = min(range(n), key=loads.__getitem__)
            self.branches["imbalanced"] += 1
        else:
            matched, tenants = tree.match(text)
            live = {t: at for t, at in tenants.items() if t < n}
            if text and live and matched / len(text) > self.cache_threshold:
                choice = max(live, key=live.__getitem__)
                self.branches["cache_hit"] += 1
            else:
                choice = min(range(n), key=lambda i: tree.size.get(i, 0))
                self.branches["smallest_tree"] += 1
        tree.insert(text, choice, now)
        return choice

    def on_complete(self, request: BenchRequest, replica: int, now: float) -> None:
        del request, replica, now  # load is the harness's in-flight count
