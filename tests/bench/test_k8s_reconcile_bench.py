"""What pod discovery costs on the EPP's event loop (the loop that also serves ext_proc).

Run::

    .venv/bin/pytest -q -m bench --benchmark-enable tests/bench/test_k8s_reconcile_bench.py

A pool of 1000 pods x 8 target ports (8000 endpoints) feeding the real
:class:`~kvroute.datastore.store.Datastore`:

* ``k8s-initial``: the first full list (every endpoint added);
* ``k8s-event``: one watch event (a pod flips Ready) with the whole 1000-pod cache handed over,
  as the reflector does; the controller re-reads and re-diffs only the changed pod.
"""

from __future__ import annotations

from typing import Any

import pytest
from lightkube.resources.core_v1 import Pod

from kvroute.datastore.store import Datastore
from kvroute.k8s.controller import PoolController
from kvroute.k8s.endpoints import PoolSpec
from tests.k8s_apiserver.objects import pod

pytestmark = pytest.mark.bench

PODS = 1000
SPEC = PoolSpec({"app": "vllm"}, tuple(range(8000, 8008)))


def _pod(i: int, rv: int, ready: bool = True) -> Any:
    d = pod(f"p{i}", f"10.0.{i // 250}.{i % 250}", ready=ready)
    d["metadata"]["resourceVersion"] = str(rv)
    return Pod.from_dict(d, lazy=False)


def _controller() -> tuple[PoolController, Datastore]:
    store = Datastore()
    return PoolController(None, store, standalone=SPEC), store  # type: ignore[arg-type]


@pytest.mark.benchmark(group="k8s-initial")
def test_initial_list(benchmark: Any) -> None:
    cache = {f"default/p{i}": _pod(i, i) for i in range(PODS)}

    def run() -> int:
        ctl, store = _controller()
        ctl._on_pods(cache)
        return len(store)

    assert benchmark(run) == PODS * len(SPEC.target_ports)


@pytest.mark.benchmark(group="k8s-event")
def test_one_pod_event(benchmark: Any) -> None:
    cache = {f"default/p{i}": _pod(i, i) for i in range(PODS)}
    ctl, store = _controller()
    ctl._on_pods(cache)
    flips = iter(range(10**9))

    def run() -> None:
        j = next(flips)
        cache["default/p7"] = _pod(7, PODS + j, ready=bool(j % 2))
        ctl._on_pods(cache)

    benchmark(run)
    assert len(store) in (PODS * 8, (PODS - 1) * 8)
