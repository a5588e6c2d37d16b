"""kvroute's real request path as a router in the virtual-time harness.

Every decision goes through the same objects the EPP builds in production: an
``EndpointPickerConfig`` (the built-in ``default`` or ``decision-tree`` profile, or a file), built
by :func:`kvroute.wiring.build_epp` (the EPP's own wiring) with the plugin registry, and driven by
the :class:`~kvroute.requestcontrol.director.Director` (admission/shedding, PrepareData,
scheduling, PreRequest, ResponseComplete hooks). The request body is real OpenAI JSON, parsed by
kvroute's parser. Only time is virtual: the director, the plugins and the saturation detector get
the harness's clock, and the endpoints' metrics carry virtual ``updated_at`` stamps, so staleness
is judged exactly as it would be live. Decision wall time therefore includes body parsing, as it
does in the EPP.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from pathlib import Path

from kvroute.embed import (
    BUILTIN_PROFILES,
    EMPTY_METRICS,
    Datastore,
    ResolvedModel,
    RoutingDecision,
    build_epp,
    builtin_epp_config,
    load_epp_config,
    parse_request,
)
from kvroute.sdk import Criticality, EndpointMetrics, EppError, Usage, default_registry
from kvroute_bench.pool import PoolView
from kvroute_bench.workload import BenchRequest

BASE_MODEL = "meta-llama/Llama-3.1-8B-Instruct"
CRITICALITY_HEADER = "x-bench-criticality"  # read by the bench resolver below, nowhere else


class _BenchResolver:
    """Model resolution for generated workloads: the body's model (base or adapter) is the
    target, and the criticality comes from the workload (what an InferenceObjective would give)."""

    def resolve(self, model: str, headers: Mapping[str, str]) -> ResolvedModel:
        crit = Criticality(headers.get(CRITICALITY_HEADER, Criticality.STANDARD.value))
        return ResolvedModel(
            incoming_model=model,
            target_model=model,
            criticality=crit,
            priority=crit.to_priority(),
        )


class EppRouter:
    """Route with kvroute's scheduler; a 429/503 from the director sheds the request.

    The director runs over its own :class:`~kvroute.datastore.store.Datastore`, as in the EPP:
    the harness's endpoints are mirrored into it (added once, their metrics swapped in when a
    scrape replaced them), and the in-flight ledger -- requests, estimated tokens, requests per
    target model -- is the director's own, counted at send and uncounted at completion. (The
    harness's counters on its :class:`~kvroute_bench.pool.PoolView` are what the baselines,
    i.e. Envoy's load balancers, see.)
    """

    def __init__(self, name: str, config_source: str, *, seed: int) -> None:
        self.name = name
        self.now = 0.0
        registry = default_registry(include_entry_points=False)
        if config_source in BUILTIN_PROFILES:
            config = builtin_epp_config(config_source, registry)
        else:
            config = load_epp_config(Path(config_source))
        self.datastore = Datastore(clock=self._clock)
        graph = build_epp(
            config,
            self.datastore,
            registry=registry,
            source=config_source,
            resolver=_BenchResolver(),
            rng=random.Random(seed),
            director_rng=random.Random(seed + 1),
            clock=self._clock,
            flow_control=False,  # the harness picks at arrival; see kvroute_bench.flowcontrol
        )
        self.graph = graph
        self.director = graph.director
        self.plugins = graph.setup.plugins  # for reports that read a plugin's state
        self._decisions: dict[str, RoutingDecision] = {}
        self._first_token: dict[str, float] = {}
        self._index: dict[str, int] = {}
        self._mirrored: list[EndpointMetrics] = []
        self._body: tuple[str, bytes] = ("", b"")

    def _clock(self) -> float:
        return self.now

    def prepare(self, request: BenchRequest) -> None:
        """Render the request body (the client's work; the harness does not time it)."""
        body = {
            "model": request.adapter or BASE_MODEL,
            "prompt": request.text(),
            "max_tokens": request.output_len,
            "stream": True,
        }
        self._body = (request.request_id, json.dumps(body).encode())

    def _mirror(self, pool: PoolView) -> None:
        """Bring the datastore up to the harness's pool: new endpoints, then fresh scrapes."""
        if len(self._index) != len(pool):
            self._index = {e.name: i for i, e in enumerate(pool.endpoints)}
            for e in pool.endpoints:
                if e.name not in self.datastore:
                    self.datastore.upsert_endpoint(e.name, e.address, e.port, e.labels)
            self._mirrored = [EMPTY_METRICS] * len(pool)
        store, mirrored = self.datastore, self._mirrored
        for i, e in enumerate(pool.endpoints):
            if e.metrics is not mirrored[i]:  # the harness scraped this replica
                mirrored[i] = e.metrics
                store.update_metrics(e.name, e.metrics)

    def pick(self, request: BenchRequest, pool: PoolView, now: float) -> int | None:
        self.now = now
        self._mirror(pool)
        if self._body[0] != request.request_id:
            self.prepare(request)
        headers = {CRITICALITY_HEADER: request.criticality.value, **request.headers}
        try:
            # What the EPP does per request: parse the body, then the director's pipeline.
            parsed = parse_request(self._body[1], "/v1/completions")
            decision = self.director.handle_request(parsed, headers, request.request_id)
        except EppError:
            return None
        self._decisions[request.request_id] = decision
        return self._index[decision.target.name]

    def on_first_token(self, request: BenchRequest, replica: int, now: float) -> None:
        """The first chunk reached the client: what the EPP's response path would time-stamp
        (and where it releases the prompt from the endpoint's prefill ledger)."""
        self._first_token[request.request_id] = now
        decision = self._decisions.get(request.request_id)
        if decision is not None:
            self.now = now
            self.director.handle_first_token(decision)

    def on_complete(self, request: BenchRequest, replica: int, now: float) -> None:
        self.now = now
        decision = self._decisions.pop(request.request_id, None)
        first = self._first_token.pop(request.request_id, None)
        if decision is not None:
            usage = Usage(
                prompt_tokens=request.prompt_len,
                completion_tokens=request.output_len,
                first_token_at=first if first is not None else now,
            )
            self.director.handle_response_complete(decision, usage)
