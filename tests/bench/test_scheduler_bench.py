"""Scheduling-cycle cost at 10 / 100 / 1000 endpoints (default profile) and the decision tree.

Run::

    .venv/bin/pytest -q -m bench --benchmark-enable tests/bench/test_scheduler_bench.py

What one timed call is:

* ``cycle[default-N]``: what the director runs per request around the scheduler for the default
  profile (prefix-cache-scorer 3, lora-affinity-scorer 4, session-affinity-scorer 3, queue-scorer
  1, kv-cache-utilization-scorer 1, active-request-scorer 2, token-load-scorer 1,
  prefill-load-scorer 2 with its prefix-hit gate and margin, max-score-picker with tieTolerance):
  every PrepareData hook, then ``Scheduler.schedule`` over a frozen tuple of N endpoints. The
  prompt is 1 KB of text (16 prefix blocks), the prefix index starts empty and plugin timing is
  on, as in the EPP.
* ``cycle[default-warm-N]``: the same with the prompt cached on every tenth endpoint.
* ``cycle[default-busy-100]``: the same with requests in flight on every endpoint (random
  in-flight counts, tokens, prefill backlog and sends since the scrape), so the load scorers
  return per-endpoint columns instead of the idle pool's uniform ones.
* ``cycle[default-fresh-100]``: the same over endpoints that report their KV cache as vLLM does
  (``cache_block_size`` 16, ``cache_num_blocks`` 4096), handed over as a new tuple every cycle:
  the datastore builds a new snapshot whenever any endpoint's metrics change, which with 100
  endpoints scraped every 50 ms is nearly every request (the other cases reuse one tuple, so
  per-snapshot work, such as the prefix scorer's auto-tune pass, runs once). The copy of the
  tuple is inside the timed call (~0.4 µs).
* ``cycle[default-lora-100]``: the same for a request to the LoRA adapter ``lora-a``, which
  some endpoints have loaded (``lora-affinity-scorer`` scores every candidate).
* ``cycle[default-round3-N]`` / ``cycle[default-round3-warm-N]``: the default of issue 11's
  second and third rounds (session-affinity-scorer 1, no ``prefixHitMargin``), for the fourth
  round's change in the same run.
* ``cycle[default-no-prefill-N]``: the default without ``prefill-load-scorer`` (the default
  before the issue-11 second round), for that scorer's cost in the same run.
* ``cycle[upstream-N]``: upstream's default (queue 2, KV 2, prefix 3, max-score-picker), which
  was kvroute's default before scheduler v2 and stays available as ``--profile upstream``.
* ``cycle[latency-100]``: the default profile plus ``latency-scorer`` (weight 1) with a warm
  predictor (every endpoint past its warm-up), i.e. what predicted-latency scoring adds.
* ``cycle[queue-kv-N]``: the same without the prefix scorer: the framework plus the two
  load scorers and the picker, i.e. this package's own cost.
* ``cycle[decision-tree-100]``: the legacy tree + random picker.
* ``director[default-100]``: the whole request-control pipeline (model resolution, admission,
  PrepareData, schedule, PreRequest, in-flight accounting, completion).

Endpoint metrics are random but fixed (seeded): queues 0..20, KV 0..0.95, a few LoRA adapters.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable
from typing import Any

import pytest

from kvroute.config.epp_config import (
    KVROUTE_DEFAULT_CONFIG_TEXT,
    PluginSpec,
    ProfilePluginRef,
    builtin_epp_config,
    parse_epp_config,
)
from kvroute.datastore.endpoint import Endpoint, EndpointMetrics
from kvroute.datastore.store import Datastore
from kvroute.plugins.registry import default_registry
from kvroute.protocol.openai import parse_request
from kvroute.requestcontrol.director import Director
from kvroute.scheduling.builder import SchedulingSetup, build_scheduling
from kvroute.scheduling.interfaces import CycleState
from kvroute.scheduling.plugins.latency.scorer import LatencyScorer
from kvroute.scheduling.plugins.prefix.approximate import PrefixCacheScorer
from kvroute.scheduling.request import InferenceRequest
from kvroute.scheduling.timing import PluginTimings

pytestmark = pytest.mark.bench

NOW = 1_000.0
PROMPT = ("the quick brown fox jumps over the lazy dog while the router picks a server " * 14)[
    :1024
]
QUEUE_KV = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins: [{type: queue-scorer}, {type: kv-cache-utilization-scorer}, {type: max-score-picker}]
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: queue-scorer, weight: 2}
  - {pluginRef: kv-cache-utilization-scorer, weight: 2}
  - {pluginRef: max-score-picker}
"""


def _endpoints(n: int) -> tuple[Endpoint, ...]:
    rng = random.Random(n)
    adapters = ["lora-a", "lora-b", "lora-c"]
    return tuple(
        Endpoint(
            name=f"vllm-{i}",
            address=f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}",
            port=8000,
            metrics=EndpointMetrics(
                waiting_queue_size=rng.randint(0, 20),
                running_queue_size=rng.randint(0, 64),
                kv_cache_usage=rng.random() * 0.95,
                active_models=frozenset(rng.sample(adapters, rng.randint(0, 2))),
                max_active_models=4,
                updated_at=NOW - 0.01,
            ),
        )
        for i in range(n)
    )


def _setup(config_text: str | None, profile: str = "default") -> SchedulingSetup:
    registry = default_registry()
    config = (
        builtin_epp_config(profile, registry)
        if config_text is None
        else parse_epp_config(config_text)
    )
    return build_scheduling(
        config, registry, rng=random.Random(0), clock=lambda: NOW, timings=PluginTimings()
    )


def _request(model: str = "base") -> InferenceRequest:
    return InferenceRequest(
        request_id="bench",
        incoming_model=model,
        target_model=model,
        prompt_text=PROMPT,
        body={"model": model, "prompt": PROMPT},
    )


def _cycle(
    setup: SchedulingSetup, endpoints: tuple[Endpoint, ...], model: str = "base"
) -> Callable[[], Any]:
    request = _request(model)
    prepare = [h for h in setup.hooks if callable(getattr(h, "prepare_data", None))]
    schedule = setup.scheduler.schedule

    def one() -> Any:
        state = CycleState(NOW)
        for hook in prepare:
            hook.prepare_data(state, request, endpoints)  # type: ignore[attr-defined]
        return schedule(request, endpoints, state=state)

    return one


@pytest.mark.parametrize("n", [10, 100, 1000], ids=lambda n: f"default-{n}")
def test_cycle_default_profile(benchmark: Any, n: int) -> None:
    setup = _setup(None)
    result = benchmark(_cycle(setup, _endpoints(n)))
    assert result.primary is not None
    setup.timings.drain() if setup.timings else None


@pytest.mark.parametrize("n", [100, 1000], ids=lambda n: f"default-warm-{n}")
def test_cycle_default_profile_warm(benchmark: Any, n: int) -> None:
    """The default profile when the prompt is cached: one endpoint in ten holds all its blocks,
    so the prefix scorer's hot-spot guard and every affinity path run (the empty-index case
    above skips them)."""
    setup, endpoints = _warm(None, n)
    result = benchmark(_cycle(setup, endpoints))
    assert result.primary is not None


def _busy(endpoints: tuple[Endpoint, ...]) -> tuple[Endpoint, ...]:
    """``endpoints`` with requests in flight (seeded): the EPP's own load counters set."""
    rng = random.Random(7)
    for e in endpoints:
        e.load.inflight = rng.randint(0, 40)
        e.load.inflight_tokens = e.load.inflight * rng.randint(100, 3000)
        e.load.prefill_tokens = rng.randint(0, 8000)
        e.load.sent_since_scrape = rng.randint(0, 3)
    return endpoints


@pytest.mark.parametrize("n", [100], ids=lambda n: f"default-busy-{n}")
def test_cycle_default_profile_busy(benchmark: Any, n: int) -> None:
    """The default profile over a pool with requests in flight everywhere."""
    result = benchmark(_cycle(_setup(None), _busy(_endpoints(n))))
    assert result.primary is not None


@pytest.mark.parametrize("n", [100], ids=lambda n: f"default-fresh-{n}")
def test_cycle_default_profile_fresh_snapshot(benchmark: Any, n: int) -> None:
    """The default profile over vLLM-like endpoints, a new candidate tuple every cycle."""
    endpoints = [
        dataclasses.replace(
            e,
            metrics=dataclasses.replace(e.metrics, cache_block_size=16, cache_num_blocks=4096),
        )
        for e in _endpoints(n)
    ]
    setup = _setup(None)
    request = _request()
    prepare = [h for h in setup.hooks if callable(getattr(h, "prepare_data", None))]
    schedule = setup.scheduler.schedule

    def one() -> Any:
        snapshot = tuple(endpoints)  # a new tuple (of the same endpoints), as after a scrape
        state = CycleState(NOW)
        for hook in prepare:
            hook.prepare_data(state, request, snapshot)  # type: ignore[attr-defined]
        return schedule(request, snapshot, state=state)

    result = benchmark(one)
    assert result.primary is not None


@pytest.mark.parametrize("n", [100], ids=lambda n: f"default-lora-{n}")
def test_cycle_default_profile_lora(benchmark: Any, n: int) -> None:
    """The default profile for a request to an adapter some endpoints have loaded."""
    result = benchmark(_cycle(_setup(None), _endpoints(n), "lora-a"))
    assert result.primary is not None


def _warm(config_text: str | None, n: int) -> tuple[SchedulingSetup, tuple[Endpoint, ...]]:
    """A setup whose prefix index has the bench prompt on every tenth of ``n`` endpoints."""
    setup = _setup(config_text)
    endpoints = _endpoints(n)
    scorer = setup.plugins["prefix-cache-scorer"]
    assert isinstance(scorer, PrefixCacheScorer)
    _level, hashes = scorer.hash_request(_request(), endpoints)
    for e in endpoints[::10]:
        scorer.index.add(e.name, hashes)
    assert len(scorer.index.match_longest_prefix(hashes)) == len(endpoints[::10])
    return setup, endpoints


def _round3_text() -> str:
    """The default profile before issue 11's fourth round (its two changes undone)."""
    text = KVROUTE_DEFAULT_CONFIG_TEXT
    for new, old in (
        (", prefixHitMargin: 0.15, prefixHitMarginScope: all}", "}"),
        (
            "{pluginRef: session-affinity-scorer, weight: 2}",
            "{pluginRef: session-affinity-scorer, weight: 1}",
        ),
    ):
        assert text.count(new) == 1, new
        text = text.replace(new, old)
    return text


@pytest.mark.parametrize("n", [100, 1000], ids=lambda n: f"default-round3-{n}")
def test_cycle_default_round3(benchmark: Any, n: int) -> None:
    result = benchmark(_cycle(_setup(_round3_text()), _endpoints(n)))
    assert result.primary is not None


@pytest.mark.parametrize("n", [100, 1000], ids=lambda n: f"default-round3-warm-{n}")
def test_cycle_default_round3_warm(benchmark: Any, n: int) -> None:
    """``default-warm-N`` with the round-3 default: one endpoint in ten caches the prompt."""
    setup, endpoints = _warm(_round3_text(), n)
    result = benchmark(_cycle(setup, endpoints))
    assert result.primary is not None


@pytest.mark.parametrize("n", [100, 1000], ids=lambda n: f"upstream-{n}")
def test_cycle_upstream_profile(benchmark: Any, n: int) -> None:
    result = benchmark(_cycle(_setup(None, "upstream"), _endpoints(n)))
    assert result.primary is not None


def test_cycle_latency_100(benchmark: Any) -> None:
    registry = default_registry()
    config = builtin_epp_config("default", registry)
    plugins = [*config.plugins, PluginSpec(type="latency-scorer")]
    prof = config.scheduling_profiles[0]
    refs = [*prof.plugins, ProfilePluginRef(plugin_ref="latency-scorer", weight=1.0)]
    config = config.model_copy(
        update={
            "plugins": plugins,
            "scheduling_profiles": [prof.model_copy(update={"plugins": refs})],
        }
    )
    setup = build_scheduling(config, registry, rng=random.Random(0), clock=lambda: NOW)
    scorer = setup.plugins["latency-scorer"]
    assert isinstance(scorer, LatencyScorer)
    endpoints = _endpoints(100)
    rng = random.Random(5)
    predictor = scorer.producer.predictor
    for e in endpoints:
        for _ in range(10):
            x = predictor.ttft_features(e, rng.random() * 2000, NOW)
            predictor.observe(e.name, x, rng.random(), predictor.tpot_features(e), 0.01)
    result = benchmark(_cycle(setup, endpoints))
    assert result.primary is not None


@pytest.mark.parametrize("n", [100, 1000], ids=lambda n: f"default-no-prefill-{n}")
def test_cycle_default_without_prefill_load(benchmark: Any, n: int) -> None:
    """The default profile before the issue-11 second round (without ``prefill-load-scorer``),
    for the cost of that scorer in the same run; a prefill backlog on every endpoint."""
    registry = default_registry()
    config = builtin_epp_config("default", registry)
    plugins = [p for p in config.plugins if p.type != "prefill-load-scorer"]
    prof = config.scheduling_profiles[0]
    refs = [r for r in prof.plugins if r.plugin_ref != "prefill-load-scorer"]
    config = config.model_copy(
        update={
            "plugins": plugins,
            "scheduling_profiles": [prof.model_copy(update={"plugins": refs})],
        }
    )
    setup = build_scheduling(config, registry, rng=random.Random(0), clock=lambda: NOW)
    endpoints = _endpoints(n)
    for i, e in enumerate(endpoints):
        e.load.prefill_tokens = (i * 397) % 9000
    result = benchmark(_cycle(setup, endpoints))
    assert result.primary is not None


@pytest.mark.parametrize("n", [10, 100, 1000], ids=lambda n: f"queue-kv-{n}")
def test_cycle_queue_kv_only(benchmark: Any, n: int) -> None:
    result = benchmark(_cycle(_setup(QUEUE_KV), _endpoints(n)))
    assert result.primary is not None


def test_cycle_decision_tree_100(benchmark: Any) -> None:
    result = benchmark(_cycle(_setup(None, "decision-tree"), _endpoints(100)))
    assert result.primary is not None


def test_director_default_100(benchmark: Any) -> None:
    setup = _setup(None)
    store = Datastore(clock=lambda: NOW)
    for e in _endpoints(100):
        store.upsert_endpoint(e.name, e.address, e.port)
        store.update_metrics(e.name, e.metrics)
    director = Director(
        store,
        None,
        setup.scheduler,
        setup.saturation_detector,
        setup.hooks,
        random.Random(0),
        clock=lambda: NOW,
    )
    parsed = parse_request(json.dumps({"model": "base", "prompt": PROMPT}).encode())

    def one() -> str:
        decision = director.handle_request(parsed, {}, "bench")
        director.handle_response_complete(decision)
        return decision.target.name

    assert benchmark(one).startswith("vllm-")
