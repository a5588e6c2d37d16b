"""Our generated CRDs against the ones upstream publishes, field by field.

The tables below are the field paths and validation markers of upstream's CRDs as read (not
generated here): llm-d-router ``config/crd/bases/llm-d.ai_inferenceobjectives.yaml`` and
``llm-d.ai_inferencemodelrewrites.yaml`` at ``ebab6879`` (2026-08-22), and GIE
``config/crd/bases/inference.networking.k8s.io_inferencepools.yaml`` at tag ``v1.6.0``;
descriptions dropped, ``minLength: 0`` (a no-op) ignored. Each CRD we generate must have
exactly upstream's paths, and each path upstream's markers, except where :data:`DEVIATIONS`
names the path, the marker and our value (``None``: we leave it out); the same deviations are
listed in ``docs/kubernetes.md``. A changed model, a new field or a forgotten marker fails.
"""

from __future__ import annotations

from typing import Any

import pytest

from kvroute.k8s import crdgen

_DNS = r"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_KIND = "^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$"
_REASON = "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
_CTYPE = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)

UPSTREAM_OBJECTIVE: dict[str, dict[str, Any]] = {
    "spec": {"type": "object", "required": ["poolRef"]},
    "spec.poolRef": {"type": "object", "required": ["name"]},
    "spec.poolRef.group": {
        "type": "string",
        "pattern": _DNS,
        "maxLength": 253,
        "default": "inference.networking.k8s.io",
    },
    "spec.poolRef.kind": {
        "type": "string",
        "pattern": _KIND,
        "minLength": 1,
        "maxLength": 63,
        "default": "InferencePool",
    },
    "spec.poolRef.name": {"type": "string", "minLength": 1, "maxLength": 253},
    "spec.priority": {"type": "integer", "format": "int32"},
    "status": {"type": "object"},
    "status.conditions": {
        "type": "array",
        "maxItems": 8,
        "default": [
            {
                "lastTransitionTime": "1970-01-01T00:00:00Z",
                "message": "Waiting for controller",
                "reason": "Pending",
                "status": "Unknown",
                "type": "Ready",
            }
        ],
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
    },
    "status.conditions[]": {
        "type": "object",
        "required": ["lastTransitionTime", "message", "reason", "status", "type"],
    },
    "status.conditions[].lastTransitionTime": {"type": "string", "format": "date-time"},
    "status.conditions[].message": {"type": "string", "maxLength": 32768},
    "status.conditions[].observedGeneration": {"type": "integer", "format": "int64", "minimum": 0},
    "status.conditions[].reason": {
        "type": "string",
        "pattern": _REASON,
        "minLength": 1,
        "maxLength": 1024,
    },
    "status.conditions[].status": {"type": "string", "enum": ["True", "False", "Unknown"]},
    "status.conditions[].type": {"type": "string", "pattern": _CTYPE, "maxLength": 316},
}

UPSTREAM_REWRITE: dict[str, dict[str, Any]] = {
    "spec": {"type": "object", "required": ["poolRef", "rules"]},
    "spec.poolRef": {"type": "object", "required": ["name"]},
    "spec.poolRef.group": {
        "type": "string",
        "pattern": _DNS,
        "maxLength": 253,
        "default": "inference.networking.k8s.io",
    },
    "spec.poolRef.kind": {
        "type": "string",
        "pattern": _KIND,
        "minLength": 1,
        "maxLength": 63,
        "default": "InferencePool",
    },
    "spec.poolRef.name": {"type": "string", "minLength": 1, "maxLength": 253},
    "spec.rules": {"type": "array"},
    "spec.rules[]": {"type": "object"},
    "spec.rules[].matches": {"type": "array"},
    "spec.rules[].matches[]": {"type": "object", "required": ["model"]},
    "spec.rules[].matches[].model": {"type": "object", "required": ["value"]},
    "spec.rules[].matches[].model.type": {"type": "string", "enum": ["Exact"], "default": "Exact"},
    "spec.rules[].matches[].model.value": {"type": "string", "minLength": 1},
    "spec.rules[].targets": {"type": "array", "minItems": 1},
    "spec.rules[].targets[]": {"type": "object", "required": ["modelRewrite"]},
    "spec.rules[].targets[].modelRewrite": {"type": "string"},
    "spec.rules[].targets[].weight": {
        "type": "integer",
        "format": "int32",
        "minimum": 1,
        "maximum": 1000000,
    },
    "status": {"type": "object"},
    "status.conditions": {
        "type": "array",
        "maxItems": 8,
        "default": [
            {
                "lastTransitionTime": "1970-01-01T00:00:00Z",
                "message": "Waiting for controller",
                "reason": "Pending",
                "status": "Unknown",
                "type": "Accepted",
            }
        ],
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
    },
    "status.conditions[]": {
        "type": "object",
        "required": ["lastTransitionTime", "message", "reason", "status", "type"],
    },
    "status.conditions[].lastTransitionTime": {"type": "string", "format": "date-time"},
    "status.conditions[].message": {"type": "string", "maxLength": 32768},
    "status.conditions[].observedGeneration": {"type": "integer", "format": "int64", "minimum": 0},
    "status.conditions[].reason": {
        "type": "string",
        "pattern": _REASON,
        "minLength": 1,
        "maxLength": 1024,
    },
    "status.conditions[].status": {"type": "string", "enum": ["True", "False", "Unknown"]},
    "status.conditions[].type": {"type": "string", "pattern": _CTYPE, "maxLength": 316},
}

UPSTREAM_POOL: dict[str, dict[str, Any]] = {
    "spec": {"type": "object", "required": ["selector", "targetPorts"]},
    "spec.appProtocol": {
        "type": "string",
        "enum": ["http", "kubernetes.io/h2c"],
        "default": "http",
    },
    "spec.endpointPickerRef": {
        "type": "object",
        "required": ["name"],
        "cel": ["self.kind != 'Service' || has(self.port)"],
    },
    "spec.endpointPickerRef.failureMode": {
        "type": "string",
        "enum": ["FailOpen", "FailClose"],
        "default": "FailClose",
    },
    "spec.endpointPickerRef.group": {
        "type": "string",
        "pattern": _DNS,
        "maxLength": 253,
        "default": "",
    },
    "spec.endpointPickerRef.kind": {
        "type": "string",
        "pattern": _KIND,
        "minLength": 1,
        "maxLength": 63,
        "default": "Service",
    },
    "spec.endpointPickerRef.name": {"type": "string", "minLength": 1, "maxLength": 253},
    "spec.endpointPickerRef.port": {"type": "object", "required": ["number"]},
    "spec.endpointPickerRef.port.number": {
        "type": "integer",
        "format": "int32",
        "minimum": 1,
        "maximum": 65535,
    },
    "spec.selector": {"type": "object", "required": ["matchLabels"]},
    "spec.selector.matchLabels": {"type": "object", "minProperties": 1, "maxProperties": 64},
    "spec.selector.matchLabels{}": {
        "type": "string",
        "pattern": "^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$",
        "maxLength": 63,
    },
    "spec.targetPorts": {
        "type": "array",
        "minItems": 1,
        "maxItems": 8,
        "x-kubernetes-list-type": "atomic",
        "cel": ["self.all(p1, self.exists_one(p2, p1.number==p2.number))"],
    },
    "spec.targetPorts[]": {"type": "object", "required": ["number"]},
    "spec.targetPorts[].number": {
        "type": "integer",
        "format": "int32",
        "minimum": 1,
        "maximum": 65535,
    },
    "status": {"type": "object"},
    "status.parents": {"type": "array", "maxItems": 32, "x-kubernetes-list-type": "atomic"},
    "status.parents[]": {"type": "object", "required": ["parentRef"]},
    "status.parents[].conditions": {
        "type": "array",
        "maxItems": 8,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
    },
    "status.parents[].conditions[]": {
        "type": "object",
        "required": ["lastTransitionTime", "message", "reason", "status", "type"],
    },
    "status.parents[].conditions[].lastTransitionTime": {"type": "string", "format": "date-time"},
    "status.parents[].conditions[].message": {"type": "string", "maxLength": 32768},
    "status.parents[].conditions[].observedGeneration": {
        "type": "integer",
        "format": "int64",
        "minimum": 0,
    },
    "status.parents[].conditions[].reason": {
        "type": "string",
        "pattern": _REASON,
        "minLength": 1,
        "maxLength": 1024,
    },
    "status.parents[].conditions[].status": {
        "type": "string",
        "enum": ["True", "False", "Unknown"],
    },
    "status.parents[].conditions[].type": {"type": "string", "pattern": _CTYPE, "maxLength": 316},
    "status.parents[].controllerName": {
        "type": "string",
        "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/"
        r"[A-Za-z0-9\/\-._~%!$&'()*+,;=:]+$",
        "minLength": 1,
        "maxLength": 253,
    },
    "status.parents[].parentRef": {"type": "object", "required": ["name"]},
    "status.parents[].parentRef.group": {
        "type": "string",
        "pattern": _DNS,
        "maxLength": 253,
        "default": "gateway.networking.k8s.io",
    },
    "status.parents[].parentRef.kind": {
        "type": "string",
        "pattern": _KIND,
        "minLength": 1,
        "maxLength": 63,
        "default": "Gateway",
    },
    "status.parents[].parentRef.name": {"type": "string", "minLength": 1, "maxLength": 253},
    "status.parents[].parentRef.namespace": {
        "type": "string",
        "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        "minLength": 1,
        "maxLength": 63,
    },
}

_CONDITIONS = {
    # metav1.Condition: upstream requires every field and carries the reason/type patterns;
    # upstream's own documentation examples write status without them (``reason:
    # Accepted|Pending``), and those examples must load, so ours only limits lengths.
    ("conditions[]", "required"): ["type"],
    ("conditions[].reason", "pattern"): None,
    ("conditions[].reason", "minLength"): None,
    ("conditions[].type", "pattern"): None,
}
_CONDITION_DEFAULT = {
    # The "Waiting for controller" status default: kvroute writes no status for these kinds.
    ("status.conditions", "default"): None,
}


def _prefixed(prefix: str, table: dict[tuple[str, str], Any]) -> dict[tuple[str, str], Any]:
    return {(prefix + path, key): value for (path, key), value in table.items()}


# (path, marker) -> our value where it differs from upstream (None: absent in ours).
DEVIATIONS: dict[str, dict[tuple[str, str], Any]] = {
    "objective": {
        ("spec.priority", "minimum"): -(2**31),  # the int32 range, stated (format says it too)
        ("spec.priority", "maximum"): 2**31 - 1,
        **_prefixed("status.", _CONDITIONS),
        **_CONDITION_DEFAULT,
    },
    "rewrite": {
        ("spec.rules[]", "required"): ["targets"],  # a rule without targets rewrites nothing
        ("spec.rules[].targets[].modelRewrite", "minLength"): 1,  # "" is no model
        **_prefixed("status.", _CONDITIONS),
        **_CONDITION_DEFAULT,
    },
    "pool": {
        # Label keys: upstream's Go type has a pattern a CRD cannot put on map keys; ours checks
        # them with CEL so a bad key fails at admission rather than in the EPP.
        ("spec.selector.matchLabels", "cel"): [
            "self.all(k, size(k) <= 253 && k.matches('"
            + r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
            + r"([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]$'))"
        ],
        **_prefixed("status.parents[].", _CONDITIONS),
    },
}

CASES = {
    "objective": (("llm-d.ai", "InferenceObjective"), UPSTREAM_OBJECTIVE),
    "rewrite": (("llm-d.ai", "InferenceModelRewrite"), UPSTREAM_REWRITE),
    "pool": (("inference.networking.k8s.io", "InferencePool"), UPSTREAM_POOL),
}

_MARKERS = (
    "type",
    "format",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "enum",
    "default",
    "required",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
)


def _flatten(node: dict[str, Any], path: str, out: dict[str, dict[str, Any]]) -> None:
    markers = {k: node[k] for k in _MARKERS if k in node}
    if node.get("minLength") == 0:
        markers.pop("minLength", None)
    if "x-kubernetes-validations" in node:
        markers["cel"] = [v["rule"] for v in node["x-kubernetes-validations"]]
    if path:
        out[path] = markers
    for name, child in node.get("properties", {}).items():
        if path or name in ("spec", "status"):
            _flatten(child, f"{path}.{name}" if path else name, out)
    if "items" in node:
        _flatten(node["items"], path + "[]", out)
    if isinstance(node.get("additionalProperties"), dict):
        _flatten(node["additionalProperties"], path + "{}", out)


def _ours(group: str, kind: str) -> dict[str, dict[str, Any]]:
    spec = next(s for s in crdgen.CRDS if s.group == group and s.kind == kind)
    out: dict[str, dict[str, Any]] = {}
    _flatten(crdgen.openapi_schema(spec), "", out)
    return out


def _expected(
    upstream: dict[str, dict[str, Any]], deviations: dict[tuple[str, str], Any]
) -> dict[str, dict[str, Any]]:
    expected = {path: dict(markers) for path, markers in upstream.items()}
    for (path, key), value in deviations.items():
        assert path in expected, f"deviation for a path upstream does not have: {path}"
        if value is None:
            assert key in expected[path], f"{path}.{key}: listed as left out, upstream lacks it"
            del expected[path][key]
        else:
            assert expected[path].get(key) != value, f"{path}.{key}: not a deviation"
            expected[path][key] = value
    return expected


@pytest.mark.parametrize("case", sorted(CASES))
def test_field_set_matches_upstream(case: str) -> None:
    (group, kind), upstream = CASES[case]
    assert set(_ours(group, kind)) == set(upstream)


@pytest.mark.parametrize("case", sorted(CASES))
def test_validation_markers_match_upstream_but_for_listed_deviations(case: str) -> None:
    (group, kind), upstream = CASES[case]
    ours = _ours(group, kind)
    expected = _expected(upstream, DEVIATIONS[case])
    mismatched = {p: (ours[p], expected[p]) for p in expected if ours.get(p) != expected[p]}
    assert not mismatched, mismatched


def test_llm_d_group_kinds_also_exist_under_the_legacy_group() -> None:
    """Same schema under both groups: an object moves by changing only its apiVersion."""
    for kind in ("InferenceObjective", "InferenceModelRewrite"):
        assert _ours("llm-d.ai", kind) == _ours("inference.networking.x-k8s.io", kind)


def test_printer_columns_match_upstream() -> None:
    columns = {
        s.kind: crdgen.crd(s)["spec"]["versions"][0].get("additionalPrinterColumns")
        for s in crdgen.CRDS
        if s.group == "llm-d.ai"
    }
    pool = {"jsonPath": ".spec.poolRef.name", "name": "Inference Pool", "type": "string"}
    age = {"jsonPath": ".metadata.creationTimestamp", "name": "Age", "type": "date"}
    priority = {"jsonPath": ".spec.priority", "name": "Priority", "type": "string"}
    assert columns == {
        "InferenceObjective": [pool, priority, age],
        "InferenceModelRewrite": [pool, age],
    }
