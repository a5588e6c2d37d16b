"""Ports of upstream's hermetic table (test/integration/epp/hermetic_test.go) that concern
scheduling and model rewriting, run through the real parser, resolver, director and scheduler.

Upstream's endpoints are pod-0..2 at 192.168.1.1..3; here ``e0..e2`` at 10.0.0.1..3. Two
generations of cases are ported: the v0.3 cases ran the legacy decision tree (the
``decision-tree`` profile here); the v1.x cases run weighted scorers. The v1.x test config is
mirrored with queue-scorer, kv-cache-utilization-scorer and lora-affinity-scorer at weight 1.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence

import pytest

from kvroute.config.epp_config import DECISION_TREE_CONFIG_TEXT, parse_epp_config
from kvroute.config.resources import load_resources_text
from kvroute.datastore.endpoint import Endpoint
from kvroute.datastore.store import Datastore
from kvroute.errors import BadRequestError, EppError
from kvroute.plugins.registry import default_registry
from kvroute.protocol.openai import parse_request, rewrite_request_body
from kvroute.requestcontrol.director import Director
from kvroute.requestcontrol.model_resolution import ModelResolver
from kvroute.scheduling.builder import build_scheduling
from tests.fakes import NOW, make_endpoint

SCORERS_CONFIG = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: lora-affinity-scorer
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: queue-scorer, weight: 1}
  - {pluginRef: kv-cache-utilization-scorer, weight: 1}
  - {pluginRef: lora-affinity-scorer, weight: 1}
"""

RESOURCES = """\
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferencePool
metadata: {name: vllm-llama3-8b-instruct-pool}
spec:
  targetPortNumber: 8000
  selector: {app: vllm-llama3-8b-instruct}
  extensionRef: {name: epp}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata: {name: inferencemodel-my-model}
spec:
  modelName: my-model
  criticality: Critical
  poolRef: {name: vllm-llama3-8b-instruct-pool}
  targetModels: [{name: my-model-12345, weight: 100}]
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata: {name: inferencemodel-sql-lora}
spec:
  modelName: sql-lora
  criticality: Critical
  poolRef: {name: vllm-llama3-8b-instruct-pool}
  targetModels: [{name: sql-lora-1fdg2, weight: 100}]
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata: {name: inferencemodel-sheddable}
spec:
  modelName: sql-lora-sheddable
  criticality: Sheddable
  poolRef: {name: vllm-llama3-8b-instruct-pool}
  targetModels: [{name: sql-lora-1fdg3, weight: 100}]
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata: {name: inferencemodel-generic}
spec:
  modelName: sql-lora-default
  poolRef: {name: vllm-llama3-8b-instruct-pool}
  targetModels: [{name: sql-lora-1fdg3, weight: 100}]
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceObjective
metadata: {name: sheddable-objective}
spec:
  priority: -1
  poolRef: {name: vllm-llama3-8b-instruct-pool}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModelRewrite
metadata: {name: rewrite-food-review}
spec:
  poolRef: {name: vllm-llama3-8b-instruct-pool}
  rules:
  - matches:
    - model: {type: Exact, value: food-review}
    targets:
    - {modelRewrite: food-review-v2, weight: 100}
"""


def _director(endpoints: Sequence[Endpoint], config: str) -> Director:
    rng = random.Random(0)
    store = Datastore(clock=lambda: NOW)
    for e in endpoints:
        store.upsert_endpoint(e.name, e.address, e.port)
        store.update_metrics(e.name, e.metrics)
    registry = default_registry(include_entry_points=False)
    setup = build_scheduling(parse_epp_config(config), registry, rng=rng, clock=lambda: NOW)
    resolver = ModelResolver(load_resources_text(RESOURCES), random.Random(0))
    return Director(
        store,
        resolver,
        setup.scheduler,
        setup.saturation_detector,
        setup.hooks,
        rng,
        clock=lambda: NOW,
    )


def _body(model: str) -> bytes:
    return json.dumps({"model": model, "prompt": "test prompt", "max_tokens": 100}).encode()


LORA = "sql-lora-1fdg2"
SHED_LORA = "sql-lora-1fdg3"

# (endpoints, model, headers, subset hint, config, expected target or status)
CASES: list[tuple[list[Endpoint], str, dict[str, str], list[str] | None, str, str | int]] = [
    (
        [
            make_endpoint("e0", waiting=3, kv=0.2),
            make_endpoint("e1", waiting=0, kv=0.1),
            make_endpoint("e2", waiting=10, kv=0.2),
        ],
        "my-model",
        {},
        None,
        SCORERS_CONFIG,
        "e1",
    ),
    (
        [
            make_endpoint("e0", waiting=0, kv=0.2, active=["foo", "bar"]),
            make_endpoint("e1", waiting=0, kv=0.1, active=["foo", LORA]),
            make_endpoint("e2", waiting=10, kv=0.2, active=["foo", "bar"]),
        ],
        "sql-lora",
        {},
        None,
        SCORERS_CONFIG,
        "e1",
    ),
    (
        [
            make_endpoint("e0", waiting=10, kv=0.2, active=["foo", "bar"]),
            make_endpoint("e1", waiting=10, kv=0.4, active=["foo", LORA]),
            make_endpoint("e2", waiting=10, kv=0.3, active=["foo"]),
        ],
        "sql-lora",
        {},
        None,
        SCORERS_CONFIG,
        "e1",
    ),
    (
        [
            make_endpoint("e0", waiting=0, kv=0.2, active=["foo", "bar", SHED_LORA]),
            make_endpoint("e1", waiting=0, kv=0.85, active=["foo", SHED_LORA]),
            make_endpoint("e2", waiting=10, kv=0.9, active=["foo", SHED_LORA]),
        ],
        "sql-lora-default",
        {},
        None,
        SCORERS_CONFIG,
        "e0",
    ),
    (
        [
            make_endpoint("e0", waiting=0, kv=0.2, active=["foo", "bar", SHED_LORA]),
            make_endpoint("e1", waiting=0, kv=0.85, active=["foo", SHED_LORA]),
            make_endpoint("e2", waiting=10, kv=0.9, active=["foo", SHED_LORA]),
        ],
        "sql-lora-default",
        {"x-gateway-inference-objective": "sheddable-objective"},
        None,
        SCORERS_CONFIG,
        429,
    ),
    (
        [
            make_endpoint("e0", waiting=0, kv=0.2),
            make_endpoint("e1", waiting=0, kv=0.1),
            make_endpoint("e2", waiting=10, kv=0.2),
        ],
        "my-model",
        {},
        ["10.0.0.1:8000", "10.0.0.3:8000"],
        SCORERS_CONFIG,
        "e0",
    ),
    (
        [
            make_endpoint("e0", waiting=0, kv=0.2),
            make_endpoint("e1", waiting=0, kv=0.1),
            make_endpoint("e2", waiting=10, kv=0.2),
        ],
        "my-model",
        {},
        ["10.0.0.3:8000", "192.168.1.99:8000"],
        SCORERS_CONFIG,
        "e2",
    ),
    (
        [make_endpoint("e0"), make_endpoint("e1")],
        "my-model",
        {},
        ["192.168.1.99:8000"],
        SCORERS_CONFIG,
        503,
    ),
    (
        [
            make_endpoint("e0", waiting=3, kv=0.2),
            make_endpoint("e1", waiting=0, kv=0.1),
            make_endpoint("e2", waiting=10, kv=0.2),
        ],
        "my-model",
        {},
        None,
        DECISION_TREE_CONFIG_TEXT,
        "e1",
    ),
    (
        [
            make_endpoint("e0", waiting=0, kv=0.2, active=["foo", "bar"]),
            make_endpoint("e1", waiting=0, kv=0.1, active=["foo", LORA]),
            make_endpoint("e2", waiting=10, kv=0.2, active=["foo", "bar"]),
        ],
        "sql-lora",
        {},
        None,
        DECISION_TREE_CONFIG_TEXT,
        "e1",
    ),
    (
        [
            make_endpoint("e0", waiting=10, kv=0.2, active=["foo", "bar"]),
            make_endpoint("e1", waiting=200, kv=0.1, active=["foo", LORA]),
            make_endpoint("e2", waiting=6, kv=0.2, active=["foo"]),
        ],
        "sql-lora",
        {},
        None,
        DECISION_TREE_CONFIG_TEXT,
        "e2",
    ),
    (
        [
            make_endpoint("e0", waiting=6, kv=0.2, active=["foo", "bar", SHED_LORA]),
            make_endpoint("e1", waiting=0, kv=0.85, active=["foo", SHED_LORA]),
            make_endpoint("e2", waiting=10, kv=0.9, active=["foo", SHED_LORA]),
        ],
        "sql-lora-sheddable",
        {},
        None,
        DECISION_TREE_CONFIG_TEXT,
        429,
    ),
    (
        [
            make_endpoint("e0", waiting=4, kv=0.2, active=["foo", "bar", SHED_LORA]),
            make_endpoint("e1", waiting=0, kv=0.85, active=["foo", SHED_LORA]),
            make_endpoint("e2", waiting=10, kv=0.9, active=["foo", SHED_LORA]),
        ],
        "sql-lora-sheddable",
        {},
        None,
        DECISION_TREE_CONFIG_TEXT,
        "e0",
    ),
]
IDS = [
    "select lower queue and kv cache, no active lora",
    "select active lora, low queue",
    "select lora despite higher kv cache (affinity)",
    "do not shed requests by default (saturated pool, priority 0)",
    "negative-priority objective on a saturated pool is shed (429)",
    "subsetting: select best from subset",
    "subsetting: partial match",
    "subsetting: no pods match (503)",
    "decision tree: select lower queue and kv cache, no active lora",
    "decision tree: select active lora, low queue",
    "decision tree: select no lora despite active model, avoid excessive queue size",
    "decision tree: noncritical and all models past threshold, shed request (429)",
    "decision tree: noncritical, but one server has capacity, do not shed",
]


@pytest.mark.parametrize(
    ("endpoints", "model", "headers", "hint", "config", "want"), CASES, ids=IDS
)
def test_hermetic_case(
    endpoints: list[Endpoint],
    model: str,
    headers: dict[str, str],
    hint: list[str] | None,
    config: str,
    want: str | int,
) -> None:
    director = _director(endpoints, config)
    parsed = parse_request(_body(model), "/v1/completions")
    if isinstance(want, int):
        with pytest.raises(EppError) as exc:
            director.handle_request(parsed, headers, "test", hint)
        assert exc.value.http_status == want
    else:
        decision = director.handle_request(parsed, headers, "test", hint)
        assert decision.target.name == want
        assert decision.endpoint_header == decision.target.hostport


@pytest.mark.parametrize(
    ("model", "target"),
    [("food-review", "food-review-v2"), ("sql-lora", LORA), ("direct-model", "direct-model")],
    ids=["rewrite request model (InferenceModelRewrite)", "InferenceModel target", "passthrough"],
)
def test_rewrite_request_model(model: str, target: str) -> None:
    director = _director([make_endpoint("e0")], SCORERS_CONFIG)
    parsed = parse_request(_body(model), "/v1/completions")
    decision = director.handle_request(parsed, {}, "test")
    assert decision.request.incoming_model == model
    assert decision.request.target_model == target
    rewritten = json.loads(rewrite_request_body(parsed, decision.request.target_model))
    assert rewritten == {"model": target, "prompt": "test prompt", "max_tokens": 100}


def test_no_backend_pods_available_for_header_only_request() -> None:
    with pytest.raises(EppError) as exc:
        _director([], SCORERS_CONFIG).random_endpoint()
    assert exc.value.http_status == 500


@pytest.mark.parametrize(
    "body",
    [b'{"prompt": "no model"}', b"{not json"],
    ids=["request missing model field", "invalid json body"],
)
def test_bad_bodies_are_400_before_scheduling(body: bytes) -> None:
    with pytest.raises(BadRequestError) as exc:
        parse_request(body, "/v1/completions")
    assert exc.value.http_status == 400
