"""Every field rule of the API models: valid variants load, each invalid one names its field.

Documents are validated the way the loader does (aliases only) and errors are rendered with
the loader's formatter, so the expected strings are what a user sees after the
``file: document N (Kind name): `` prefix.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError

from kvroute.api import (
    RESOURCE_KINDS,
    InferenceModel,
    InferenceModelRewrite,
    InferencePoolV1,
    InferencePoolV1Alpha2,
    KubeModel,
)
from kvroute.config.yaml_errors import format_validation_error

POOL_V1: dict[str, Any] = {
    "apiVersion": "inference.networking.k8s.io/v1",
    "kind": "InferencePool",
    "metadata": {"name": "pool"},
    "spec": {
        "selector": {"matchLabels": {"app": "vllm"}},
        "targetPorts": [{"number": 8000}],
        "endpointPickerRef": {"name": "pool-epp", "port": {"number": 9002}},
    },
}
POOL_V1ALPHA2: dict[str, Any] = {
    "apiVersion": "inference.networking.x-k8s.io/v1alpha2",
    "kind": "InferencePool",
    "metadata": {"name": "pool"},
    "spec": {"selector": {"app": "vllm"}, "targetPortNumber": 8000},
}
MODEL: dict[str, Any] = {
    "apiVersion": "inference.networking.x-k8s.io/v1alpha2",
    "kind": "InferenceModel",
    "metadata": {"name": "food-review"},
    "spec": {
        "modelName": "food-review",
        "targetModels": [{"name": "a", "weight": 90}, {"name": "b", "weight": 10}],
        "poolRef": {"name": "pool"},
    },
}
OBJECTIVE: dict[str, Any] = {
    "apiVersion": "inference.networking.x-k8s.io/v1alpha2",
    "kind": "InferenceObjective",
    "metadata": {"name": "premium"},
    "spec": {"priority": 10, "poolRef": {"name": "pool"}},
}
REWRITE: dict[str, Any] = {
    "apiVersion": "inference.networking.x-k8s.io/v1alpha2",
    "kind": "InferenceModelRewrite",
    "metadata": {"name": "canary"},
    "spec": {
        "poolRef": {"name": "pool"},
        "rules": [
            {
                "matches": [{"model": {"value": "m"}}],
                "targets": [{"modelRewrite": "m-v1", "weight": 1}],
            }
        ],
    },
}
BASES = {
    "pool-v1": POOL_V1,
    "pool-v1alpha2": POOL_V1ALPHA2,
    "model": MODEL,
    "objective": OBJECTIVE,
    "rewrite": REWRITE,
}


def _with(base: str, path: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``BASES[base]`` with ``path`` (dots; ``-`` deletes) set to ``value``."""
    doc = copy.deepcopy(BASES[base])
    *parents, last = path.split(".")
    node: Any = doc
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    key: Any = int(last) if last.isdigit() else last
    if value == "-":
        del node[key]
    else:
        node[key] = value
    return doc


def _validate(doc: dict[str, Any]) -> KubeModel:
    model = RESOURCE_KINDS[(doc["apiVersion"], doc["kind"])]
    return model.model_validate(doc, by_alias=True, by_name=False)


def _errors(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationError) as exc:
        _validate(doc)
    return format_validation_error(exc.value)


VALID = [
    ("pool-v1 minimal", "pool-v1", "spec.endpointPickerRef", "-"),
    ("pool-v1 h2c", "pool-v1", "spec.appProtocol", "kubernetes.io/h2c"),
    ("pool-v1 eight ports", "pool-v1", "spec.targetPorts", [{"number": p} for p in range(1, 9)]),
    (
        "pool-v1 64 labels",
        "pool-v1",
        "spec.selector.matchLabels",
        {f"k{i}": "v" for i in range(64)},
    ),
    ("pool-v1 prefixed label", "pool-v1", "spec.selector.matchLabels", {"app.io/name": "x"}),
    ("pool-v1 empty label value", "pool-v1", "spec.selector.matchLabels", {"app": ""}),
    (
        "pool-v1 non-service ref without port",
        "pool-v1",
        "spec.endpointPickerRef",
        {"kind": "Backend", "group": "x.io", "name": "b"},
    ),
    ("pool-v1 FailOpen", "pool-v1", "spec.endpointPickerRef.failureMode", "FailOpen"),
    ("pool-v1 status", "pool-v1", "status", {"parents": []}),
    ("pool-v1alpha2 port 65535", "pool-v1alpha2", "spec.targetPortNumber", 65535),
    (
        "pool-v1alpha2 extensionRef",
        "pool-v1alpha2",
        "spec.extensionRef",
        {"name": "epp", "portNumber": 9002, "failureMode": "FailOpen"},
    ),
    ("pool no metadata", "pool-v1alpha2", "metadata", "-"),
    ("model 256-char name", "model", "spec.modelName", "m" * 256),
    ("model no weights", "model", "spec.targetModels", [{"name": "a"}, {"name": "b"}]),
    ("model no targets", "model", "spec.targetModels", "-"),
    ("model weight bounds", "model", "spec.targetModels", [{"name": "a", "weight": 1_000_000}]),
    ("model ten targets", "model", "spec.targetModels", [{"name": f"t{i}"} for i in range(10)]),
    ("model criticality", "model", "spec.criticality", "Sheddable"),
    ("model 253-char target", "model", "spec.targetModels", [{"name": "t" * 253}]),
    ("objective negative", "objective", "spec.priority", -5),
    ("objective unset priority", "objective", "spec.priority", "-"),
    ("rewrite generic rule", "rewrite", "spec.rules.0.matches", "-"),
    ("rewrite unweighted", "rewrite", "spec.rules.0.targets", [{"modelRewrite": "x"}]),
    (
        "metadata from kubectl",
        "objective",
        "metadata",
        {
            "name": "premium",
            "namespace": "team-a",
            "uid": "0d6f",
            "resourceVersion": "42",
            "generation": 3,
            "creationTimestamp": "2025-07-01T10:00:00Z",
            "labels": {"team": "a"},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
            "managedFields": [{"manager": "kubectl", "operation": "Update"}],
            "finalizers": ["x/y"],
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "c", "uid": "u"}],
        },
    ),
]


@pytest.mark.parametrize(
    ("base", "path", "value"), [v[1:] for v in VALID], ids=[v[0] for v in VALID]
)
def test_valid_documents_load(base: str, path: str, value: Any) -> None:
    obj = _validate(_with(base, path, value))
    assert obj.model_dump(by_alias=True)["kind"] == BASES[base]["kind"]


INVALID = [
    (
        "pool-v1 no ports",
        "pool-v1",
        "spec.targetPorts",
        [],
        "spec.targetPorts: must have at least 1 item(s)",
    ),
    (
        "pool-v1 nine ports",
        "pool-v1",
        "spec.targetPorts",
        [{"number": p} for p in range(1, 10)],
        "spec.targetPorts: must have at most 8 items (got 9)",
    ),
    (
        "pool-v1 duplicate port",
        "pool-v1",
        "spec.targetPorts",
        [{"number": 8000}, {"number": 8000}],
        "spec.targetPorts: port 8000 is listed more than once",
    ),
    (
        "pool-v1 port 0",
        "pool-v1",
        "spec.targetPorts",
        [{"number": 0}],
        "spec.targetPorts[0].number: must be 1..65535",
    ),
    (
        "pool-v1 port string",
        "pool-v1",
        "spec.targetPorts",
        [{"number": "80"}],
        "spec.targetPorts[0].number: expected an integer, got a string",
    ),
    (
        "pool-v1 no labels",
        "pool-v1",
        "spec.selector.matchLabels",
        {},
        "spec.selector.matchLabels: must have at least 1 item(s)",
    ),
    (
        "pool-v1 65 labels",
        "pool-v1",
        "spec.selector.matchLabels",
        {f"k{i}": "v" for i in range(65)},
        "spec.selector.matchLabels: must have at most 64 items (got 65)",
    ),
    (
        "pool-v1 bad label value",
        "pool-v1",
        "spec.selector.matchLabels",
        {"app": "-x"},
        "spec.selector.matchLabels.app: '-x' is not a valid label value",
    ),
    (
        "pool-v1 boolean label value",
        "pool-v1",
        "spec.selector.matchLabels",
        {"app": True},
        "spec.selector.matchLabels.app: expected a string, got a boolean",
    ),
    (
        "pool-v1 selector as plain map",
        "pool-v1",
        "spec.selector",
        {"app": "x"},
        "spec.selector.matchLabels: required field missing",
    ),
    (
        "pool-v1 appProtocol",
        "pool-v1",
        "spec.appProtocol",
        "grpc",
        "spec.appProtocol: must be 'http' or 'kubernetes.io/h2c', got 'grpc'",
    ),
    (
        "pool-v1 failureMode",
        "pool-v1",
        "spec.endpointPickerRef.failureMode",
        "Fail",
        "spec.endpointPickerRef.failureMode: must be 'FailOpen' or 'FailClose', got 'Fail'",
    ),
    (
        "pool-v1 service ref without port",
        "pool-v1",
        "spec.endpointPickerRef.port",
        "-",
        "spec.endpointPickerRef: port is required when kind is Service",
    ),
    (
        "pool-v1 unknown spec field",
        "pool-v1",
        "spec.targetPortNumber",
        8000,
        "spec.targetPortNumber: unknown field",
    ),
    ("pool-v1 missing spec", "pool-v1", "spec", "-", "spec: required field missing"),
    (
        "pool-v1alpha2 port too big",
        "pool-v1alpha2",
        "spec.targetPortNumber",
        65536,
        "spec.targetPortNumber: must be 1..65535",
    ),
    (
        "pool-v1alpha2 v1 field",
        "pool-v1alpha2",
        "spec.targetPorts",
        [{"number": 1}],
        "spec.targetPorts: unknown field",
    ),
    (
        "pool-v1alpha2 portNumber 0",
        "pool-v1alpha2",
        "spec.extensionRef",
        {"name": "e", "portNumber": 0},
        "spec.extensionRef.portNumber: must be 1..65535",
    ),
    (
        "model name too long",
        "model",
        "spec.modelName",
        "m" * 257,
        "spec.modelName: must be at most 256 characters (got 257)",
    ),
    ("model name empty", "model", "spec.modelName", "", "spec.modelName: must not be empty"),
    (
        "model criticality",
        "model",
        "spec.criticality",
        "High",
        "spec.criticality: must be 'Critical', 'Standard' or 'Sheddable', got 'High'",
    ),
    (
        "model weight 0",
        "model",
        "spec.targetModels.1.weight",
        0,
        "spec.targetModels[1].weight: must be 1..1000000",
    ),
    (
        "model weight too big",
        "model",
        "spec.targetModels.0.weight",
        1_000_001,
        "spec.targetModels[0].weight: must be 1..1000000",
    ),
    (
        "model weights partial",
        "model",
        "spec.targetModels",
        [{"name": "a", "weight": 1}, {"name": "b"}],
        "spec.targetModels: weights must be set on all targetModels or on none",
    ),
    (
        "model eleven targets",
        "model",
        "spec.targetModels",
        [{"name": f"t{i}"} for i in range(11)],
        "spec.targetModels: must have at most 10 items (got 11)",
    ),
    (
        "model target name too long",
        "model",
        "spec.targetModels",
        [{"name": "t" * 254}],
        "spec.targetModels[0].name: must be at most 253 characters (got 254)",
    ),
    ("model no poolRef", "model", "spec.poolRef", "-", "spec.poolRef: required field missing"),
    ("model snake_case key", "model", "spec.model_name", "x", "spec.model_name: unknown field"),
    (
        "objective priority float",
        "objective",
        "spec.priority",
        1.5,
        "spec.priority: expected an integer, got a number",
    ),
    (
        "objective poolRef no name",
        "objective",
        "spec.poolRef",
        {},
        "spec.poolRef.name: required field missing",
    ),
    (
        "rewrite no targets",
        "rewrite",
        "spec.rules.0.targets",
        [],
        "spec.rules[0].targets: must have at least 1 item(s)",
    ),
    (
        "rewrite match type",
        "rewrite",
        "spec.rules.0.matches",
        [{"model": {"type": "Prefix", "value": "m"}}],
        "spec.rules[0].matches[0].model.type: must be 'Exact', got 'Prefix'",
    ),
    (
        "rewrite empty match value",
        "rewrite",
        "spec.rules.0.matches",
        [{"model": {"value": ""}}],
        "spec.rules[0].matches[0].model.value: must not be empty",
    ),
    (
        "rewrite weight 0",
        "rewrite",
        "spec.rules.0.targets",
        [{"modelRewrite": "x", "weight": 0}],
        "spec.rules[0].targets[0].weight: must be 1..1000000",
    ),
    (
        "metadata bad name",
        "objective",
        "metadata.name",
        "Premium_Tier",
        "metadata.name: 'Premium_Tier' is not a valid object name",
    ),
    (
        "metadata unknown field",
        "objective",
        "metadata.owner",
        "me",
        "metadata.owner: unknown field",
    ),
    (
        "status condition value",
        "objective",
        "status",
        {"conditions": [{"type": "Accepted", "status": "Yes"}]},
        "status.conditions[0].status: must be 'True', 'False' or 'Unknown', got 'Yes'",
    ),
]


@pytest.mark.parametrize(
    ("base", "path", "value", "expected"), [v[1:] for v in INVALID], ids=[v[0] for v in INVALID]
)
def test_invalid_documents_name_the_field(base: str, path: str, value: Any, expected: str) -> None:
    errors = _errors(_with(base, path, value))
    assert any(e.startswith(expected) for e in errors), errors


def test_pool_views_normalise_both_versions() -> None:
    v1 = InferencePoolV1.model_validate(POOL_V1, by_alias=True, by_name=False).view()
    alpha = InferencePoolV1Alpha2.model_validate(
        _with("pool-v1alpha2", "spec.extensionRef", {"name": "epp"}), by_alias=True, by_name=False
    ).view()
    assert (v1.name, dict(v1.selector), v1.target_ports) == ("pool", {"app": "vllm"}, (8000,))
    assert (v1.failure_mode, v1.epp_service, v1.epp_port) == ("FailClose", "pool-epp", 9002)
    # v1alpha2: one port, and a Service extension with no port infers 9002 (upstream spec).
    assert (alpha.target_ports, alpha.epp_service, alpha.epp_port) == ((8000,), "epp", 9002)
    assert alpha.matches({"app": "vllm", "other": "x"})
    assert not alpha.matches({"app": "sglang"})


def test_defaults_follow_the_api() -> None:
    model = InferenceModel.model_validate(MODEL, by_alias=True, by_name=False)
    assert model.metadata.namespace == "default"
    assert model.spec.criticality is None  # unset: treated as Standard by the resolver
    assert model.spec.pool_ref.group == "inference.networking.x-k8s.io"
    rewrite = InferenceModelRewrite.model_validate(REWRITE, by_alias=True, by_name=False)
    assert rewrite.spec.pool_ref.group == "inference.networking.k8s.io"
    assert rewrite.spec.rules[0].matches[0].model.type == "Exact"
    v1 = InferencePoolV1.model_validate(POOL_V1, by_alias=True, by_name=False)
    assert v1.spec.app_protocol == "http"
    assert v1.spec.endpoint_picker_ref is not None
    assert v1.spec.endpoint_picker_ref.kind == "Service"


def test_json_schema_keeps_the_constraints() -> None:
    """The models will generate CRD schemas: bounds and lengths must be in them."""
    schema = InferenceModel.model_json_schema(by_alias=True)
    defs = schema["$defs"]
    target = defs["TargetModel"]["properties"]
    weight = target["weight"]["anyOf"][0]
    assert (weight["minimum"], weight["maximum"]) == (1, 1_000_000)
    assert target["name"]["maxLength"] == 253
    spec = defs["InferenceModelSpec"]["properties"]
    assert spec["modelName"]["maxLength"] == 256
    assert spec["targetModels"]["maxItems"] == 10
    assert defs["InferenceModelSpec"]["additionalProperties"] is False
    pool = InferencePoolV1.model_json_schema(by_alias=True)["$defs"]["InferencePoolSpecV1"]
    assert (
        pool["properties"]["targetPorts"]["minItems"],
        pool["properties"]["targetPorts"]["maxItems"],
    ) == (1, 8)


def test_python_code_can_use_field_names() -> None:
    """Loaders validate by alias only, but code (and the k8s watcher) may build by name."""
    obj = InferenceModel.model_validate(
        {
            "api_version": "inference.networking.x-k8s.io/v1alpha2",
            "kind": "InferenceModel",
            "spec": {"model_name": "m", "pool_ref": {"name": "p"}},
        }
    )
    assert obj.spec.model_name == "m"
    assert obj.model_dump(by_alias=True, exclude_none=True)["spec"]["modelName"] == "m"


@pytest.mark.parametrize(
    "key", list(RESOURCE_KINDS), ids=[f"{k}@{v.rsplit('/', 1)[-1]}" for v, k in RESOURCE_KINDS]
)
def test_every_kind_emits_a_closed_json_schema(key: tuple[str, str]) -> None:
    schema = RESOURCE_KINDS[key].model_json_schema(by_alias=True)
    assert schema["additionalProperties"] is False
    assert {"apiVersion", "kind", "spec"} <= set(schema["properties"])
    assert schema["properties"]["kind"]["const"] == key[1]
    assert "spec" in schema["required"]
