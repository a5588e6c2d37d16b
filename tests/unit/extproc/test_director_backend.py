"""The production backend over the real director, scheduler, resolver and codec (no network)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import zmq.auth

from kvroute.app import build_director_backend
from kvroute.config.epp_config import default_config_text
from kvroute.datastore.endpoint import EndpointMetrics
from kvroute.datastore.store import Datastore
from kvroute.errors import BadRequestError, EppError, PoolExhaustedError
from kvroute.extproc.backend import Outcome, RoutingBackend, RoutingInput
from kvroute.extproc.director_backend import REPLICA_RESPONSE_HEADER
from kvroute.observability.metrics import EppMetrics
from kvroute.plugins.registry import default_registry
from kvroute.settings import EppSettings


def route(backend: RoutingBackend, rin: RoutingInput) -> Any:
    return asyncio.run(backend.route(rin))


RESOURCES = """\
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {name: unit-pool}
spec:
  selector: {matchLabels: {app: x}}
  targetPorts: [{number: 8000}]
  endpointPickerRef: {name: epp, port: {number: 9002}}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata: {name: food-review}
spec:
  modelName: food-review
  targetModels: [{name: base, weight: 1}]
  poolRef: {name: unit-pool}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceObjective
metadata: {name: batch}
spec: {priority: -1, poolRef: {name: unit-pool}}
"""


def _setup(
    tmp_path: Path, *, saturated: bool = False, **extra: Any
) -> tuple[RoutingBackend, Datastore, EppMetrics]:
    path = tmp_path / "pool.yaml"
    path.write_text(RESOURCES)
    store = Datastore()
    for i in range(3):
        store.upsert_endpoint(f"ep{i}", f"10.0.0.{i}", 8000)
        waiting = 50 if saturated else i
        kv = 0.99 if saturated else 0.1
        store.update_metrics(
            f"ep{i}", EndpointMetrics(waiting_queue_size=waiting, kv_cache_usage=kv)
        )
    # Flow control off: these metrics are set once and never scraped again, so on a loaded box
    # they can go stale (200 ms) before the request is routed, and flow control would then hold
    # it for its TTL; legacy admission still rejects sheddable traffic when saturated.
    config = default_config_text(default_registry()) + "flowControl: {enabled: false}\n"
    settings = EppSettings(
        endpoints=(("10.0.0.0", 8000),), resources=(path,), config_text=config, **extra
    )
    metrics = EppMetrics("ignored")
    built = asyncio.run(build_director_backend(settings, store, metrics))
    return built.backend, store, metrics


def _input(body: dict[str, object], **headers: str) -> RoutingInput:
    return RoutingInput(
        body=json.dumps(body).encode(),
        headers={":path": "/v1/completions", **headers},
        path="/v1/completions",
        request_id="rid",
        objective=headers.get("x-gateway-inference-objective"),
    )


def test_route_rewrites_model_and_counts_in_flight(tmp_path: Path) -> None:
    backend, store, metrics = _setup(tmp_path)
    routed = route(backend, _input({"model": "food-review", "prompt": "hi"}))
    assert routed.endpoints == ("10.0.0.0:8000",)  # shortest queue
    assert json.loads(routed.body)["model"] == "base"
    assert (routed.incoming_model, routed.target_model) == ("food-review", "base")
    assert sum(e.load.inflight for e in store.endpoints()) == 1
    assert metrics.pool_name == "unit-pool"  # the resources' pool labels the pool gauges

    f = backend.response_filter(routed, streaming=False)
    out = f.feed(b'{"model":"base","usage":{"prompt_tokens":3,"completion_tokens":2}}', True)
    assert json.loads(out)["model"] == "food-review"
    backend.complete(routed, Outcome(status=200, usage=f.usage, response_bytes=len(out)))
    backend.complete(routed, Outcome(status=200, usage=f.usage))  # idempotent in the director
    assert sum(e.load.inflight for e in store.endpoints()) == 0
    labels = {"model_name": "food-review", "target_model_name": "base"}
    reg = metrics.registry
    assert reg.get_sample_value("inference_objective_output_tokens_sum", labels) == 2 * 2
    assert (
        reg.get_sample_value("inference_objective_request_total", {**labels, "priority": "0"}) == 1
    )


def test_a_synced_replica_names_itself_on_every_routed_response(tmp_path: Path) -> None:
    """Active-active: the response says which replica routed it (``x-kvroute-epp-replica``);
    a single EPP (no ``--sync-port``) adds nothing."""
    _, secret = zmq.auth.create_certificates(tmp_path, "pool")
    synced, _, _ = _setup(tmp_path, sync_port=0, sync_key_file=Path(secret), replica_id="epp-7")
    routed = route(synced, _input({"model": "base", "prompt": "hi"}))
    assert routed.response_headers == {REPLICA_RESPONSE_HEADER: "epp-7"}
    alone, _, _ = _setup(tmp_path)
    assert (
        REPLICA_RESPONSE_HEADER
        not in route(alone, _input({"model": "base", "prompt": "hi"})).response_headers
    )


def test_first_streamed_chunk_releases_the_prompt_from_the_prefill_ledger(tmp_path: Path) -> None:
    """``full`` response mode: the first body chunk through the filter tells the director."""
    backend, store, _ = _setup(tmp_path)
    routed = route(backend, _input({"model": "base", "prompt": "p" * 400, "stream": True}))
    assert sum(e.load.prefill_tokens for e in store.endpoints()) == 100
    f = backend.response_filter(routed, streaming=True)
    f.feed(b"", False)  # an empty chunk is not a first token
    assert sum(e.load.prefill_tokens for e in store.endpoints()) == 100
    f.feed(b'data: {"model":"base","choices":[{"text":"a"}]}\n\n', False)
    assert sum(e.load.prefill_tokens for e in store.endpoints()) == 0
    assert sum(e.load.inflight_tokens for e in store.endpoints()) == 100  # still in flight
    f.feed(b"data: [DONE]\n\n", True)
    backend.complete(routed, Outcome(status=200, usage=f.usage))
    assert sum(e.load.inflight_tokens for e in store.endpoints()) == 0


def test_no_response_body_seen_releases_the_prompt_at_completion(tmp_path: Path) -> None:
    """Light response processing (no filter fed): the prefill ledger empties at completion."""
    backend, store, _ = _setup(tmp_path)
    routed = route(backend, _input({"model": "base", "prompt": "p" * 400}))
    assert sum(e.load.prefill_tokens for e in store.endpoints()) == 100
    backend.complete(routed, Outcome(status=200))
    assert sum(e.load.prefill_tokens for e in store.endpoints()) == 0


def test_unchanged_model_keeps_the_original_bytes(tmp_path: Path) -> None:
    backend, _, _ = _setup(tmp_path)
    rin = _input({"model": "base", "prompt": "hi"})
    assert route(backend, rin).body is rin.body


@pytest.mark.parametrize(
    ("body", "headers", "saturated", "error"),
    [
        ({"prompt": "no model"}, {}, False, BadRequestError),
        (
            {"model": "base", "prompt": "x"},
            {"x-gateway-inference-objective": "batch"},
            True,
            PoolExhaustedError,
        ),
    ],
    ids=["missing-model-400", "sheddable-while-saturated-429"],
)
def test_errors_are_raised_and_counted(
    tmp_path: Path,
    body: dict[str, object],
    headers: dict[str, str],
    saturated: bool,
    error: type[EppError],
) -> None:
    backend, _, metrics = _setup(tmp_path, saturated=saturated)
    rin = _input(body, **headers)
    with pytest.raises(error) as exc:
        route(backend, rin)
    backend.rejected(exc.value, rin)
    code = exc.value.code.value
    model = str(body.get("model", ""))
    value = metrics.registry.get_sample_value(
        "inference_objective_request_error_total",
        {"model_name": model, "target_model_name": model, "error_code": code},
    )
    assert value == 1


def test_header_only_route_any(tmp_path: Path) -> None:
    backend, _, _ = _setup(tmp_path)
    assert backend.route_any("rid") in {"10.0.0.0:8000", "10.0.0.1:8000", "10.0.0.2:8000"}


def test_usage_absent_leaves_token_metrics_empty(tmp_path: Path) -> None:
    backend, _, metrics = _setup(tmp_path)
    routed = route(backend, _input({"model": "base", "prompt": "hi"}))
    backend.complete(routed, Outcome(status=200, usage=None, disconnected=True))
    labels = {"model_name": "base", "target_model_name": "base"}
    assert (
        metrics.registry.get_sample_value("inference_objective_output_tokens_count", labels) is None
    )
    assert (
        metrics.registry.get_sample_value(
            "inference_objective_request_duration_seconds_count", labels
        )
        == 1
    )


def test_failure_after_scheduling_gives_the_in_flight_count_back(tmp_path: Path) -> None:
    """The body rewrite runs after the director counted the request in flight. The failing
    rewrite is injected (the real one has no input that fails once parsing succeeded)."""
    from kvroute.extproc.director_backend import Codec, DirectorBackend
    from kvroute.extproc.response_filter import OpenAIResponseFilter
    from kvroute.protocol.openai import ParsedRequest, parse_request

    built, store, metrics = _setup(tmp_path)

    def failing_rewrite(parsed: ParsedRequest, target: str) -> bytes:
        raise MemoryError("no room for the rewritten body")

    director = built._director  # type: ignore[attr-defined]
    backend = DirectorBackend(
        director, Codec(parse_request, failing_rewrite, OpenAIResponseFilter), metrics
    )
    with pytest.raises(MemoryError):
        route(backend, _input({"model": "food-review", "prompt": "hi"}))
    assert sum(e.load.inflight for e in store.endpoints()) == 0
    assert sum(e.load.inflight_tokens for e in store.endpoints()) == 0
    running = metrics.registry.get_sample_value(
        "inference_objective_running_requests", {"model_name": "food-review"}
    )
    assert running in (None, 0.0)


def test_inflight_ledger_counts_prompt_tokens_and_models_until_done_or_disconnect(
    tmp_path: Path,
) -> None:
    """The datastore's in-flight ledger (what token-aware scorers read): a sent request adds its
    estimated prompt tokens (4 chars per token) and its target model on the chosen endpoint;
    its end -- a completed response or a client that went away -- takes exactly that back."""
    backend, store, _ = _setup(tmp_path)
    prompt = "x" * 400  # 100 estimated tokens
    first = route(backend, _input({"model": "food-review", "prompt": prompt, "max_tokens": 7}))
    second = route(backend, _input({"model": "food-review", "prompt": prompt * 2}))
    loads = {e.hostport: e.load for e in store.endpoints()}
    assert sum(load.inflight_tokens for load in loads.values()) == 300
    assert sum(load.inflight_models.get("base", 0) for load in loads.values()) == 2
    first_load = loads[first.endpoints[0]]
    assert first_load.inflight_tokens >= 100
    backend.complete(first, Outcome(status=200))
    assert sum(load.inflight_tokens for load in loads.values()) == 200
    backend.complete(second, Outcome(status=None, disconnected=True))  # client went away
    assert all(load.inflight_tokens == 0 for load in loads.values())
    assert all(load.inflight == 0 for load in loads.values())
    assert all(load.inflight_models == {} for load in loads.values())
    backend.complete(second, Outcome(status=None, disconnected=True))  # reported twice: no-op
    assert all(load.inflight_tokens == 0 for load in loads.values())
