"""Generate the CustomResourceDefinitions from kvroute's pydantic API models.

``python -m kvroute.k8s.crdgen`` writes ``deploy/crds/*.yaml``; ``--check`` exits 1 when the
committed files differ from what the models generate (a test runs the same comparison), so the
CRDs and the models cannot drift.

pydantic's JSON Schema becomes a *structural* OpenAPI v3 schema, as the API server requires:

* ``$ref``/``$defs`` are inlined; ``title`` and ``description`` are dropped (the models'
  docstrings are written for developers, not for ``kubectl explain``); ``Optional[X]``
  (``anyOf [X, null]``) becomes ``X`` (optional fields are simply not ``required``);
  ``default: null`` is dropped;
* ``const`` becomes a one-value ``enum``; ``additionalProperties: false`` (``extra=forbid``) is
  dropped, since unknown fields are pruned by the API server anyway;
* maps with constrained keys (``patternProperties``/``propertyNames``) become
  ``additionalProperties`` plus a CEL rule on the keys;
* rules a field's type cannot express (unique ports, weights all-or-none, an immutable model
  name, a port required for a Service reference) are added as ``x-kubernetes-validations`` at
  named paths (:data:`CEL_RULES`); generation fails if such a path no longer exists.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kvroute.api import (
    InferenceModel,
    InferenceModelRewrite,
    InferenceObjective,
    InferencePoolV1,
    InferencePoolV1Alpha2,
    KubeModel,
)

Schema = dict[str, Any]

DEFAULT_OUT = Path("deploy/crds")


@dataclass(frozen=True, slots=True)
class CrdSpec:
    """One CRD: the model that defines its schema and the names it is served under."""

    model: type[KubeModel]
    group: str
    version: str
    kind: str
    plural: str
    short_names: tuple[str, ...] = ()
    printer_columns: tuple[tuple[str, str, str], ...] = ()  # (name, type, jsonPath)

    @property
    def name(self) -> str:
        return f"{self.plural}.{self.group}"

    @property
    def filename(self) -> str:
        return f"{self.group}_{self.plural}.yaml"


_POOL_COLUMN = ("Inference Pool", "string", ".spec.poolRef.name")
_AGE = ("Age", "date", ".metadata.creationTimestamp")

CRDS: tuple[CrdSpec, ...] = (
    CrdSpec(
        InferencePoolV1,
        "inference.networking.k8s.io",
        "v1",
        "InferencePool",
        "inferencepools",
        ("infpool",),
    ),
    CrdSpec(
        InferencePoolV1Alpha2,
        "inference.networking.x-k8s.io",
        "v1alpha2",
        "InferencePool",
        "inferencepools",
    ),
    CrdSpec(
        InferenceModel,
        "inference.networking.x-k8s.io",
        "v1alpha2",
        "InferenceModel",
        "inferencemodels",
    ),
    *(
        spec
        for group in ("llm-d.ai", "inference.networking.x-k8s.io")
        for spec in (
            CrdSpec(
                InferenceObjective,
                group,
                "v1alpha2",
                "InferenceObjective",
                "inferenceobjectives",
                printer_columns=(_POOL_COLUMN, ("Priority", "string", ".spec.priority"), _AGE),
            ),
            CrdSpec(
                InferenceModelRewrite,
                group,
                "v1alpha2",
                "InferenceModelRewrite",
                "inferencemodelrewrites",
                printer_columns=(_POOL_COLUMN, _AGE),
            ),
        )
    ),
)

_WEIGHTS_ALL_OR_NONE = (
    "self.all(t, has(t.weight)) || self.all(t, !has(t.weight))",
    "weights must be set on all targets or on none",
)

# (kind, version) -> dotted path under openAPIV3Schema.properties -> [(rule, message), ...]
CEL_RULES: dict[tuple[str, str], dict[str, list[tuple[str, str]]]] = {
    ("InferencePool", "v1"): {
        "spec.targetPorts": [
            (
                "self.all(p1, self.exists_one(p2, p1.number==p2.number))",
                "port number must be unique",
            )
        ],
        "spec.endpointPickerRef": [
            (
                "self.kind != 'Service' || has(self.port)",
                "port is required when kind is 'Service' or unspecified (defaults to 'Service')",
            )
        ],
    },
    ("InferenceModel", "v1alpha2"): {
        "spec.modelName": [("self == oldSelf", "modelName is immutable")],
        "spec.targetModels": [_WEIGHTS_ALL_OR_NONE],
    },
}

# Lists keyed by a field (``+listType=map``): conditions are merged by ``type``.
_MAP_LISTS = {"conditions": ["type"]}
# Lists replaced whole on merge (``+listType=atomic``), as upstream's InferencePool v1 marks them.
_ATOMIC_LISTS = {("InferencePool", "v1"): ("spec.targetPorts", "status.parents")}

_API_APPROVAL = (
    "unapproved, kvroute's copy of the Gateway API Inference Extension CRDs; "
    "install the upstream CRDs where available"
)


class CrdGenError(RuntimeError):
    """The models no longer match the generator's expectations (e.g. a CEL path is gone)."""


def _cel_string(text: str) -> str:
    """Escape for a single-quoted CEL string literal (backslashes and quotes)."""
    return text.replace("\\", "\\\\").replace("'", "\\'")


def to_structural(node: Any, defs: Mapping[str, Schema], key: str | None = None) -> Any:
    """Convert one pydantic JSON Schema node to structural OpenAPI v3 (see module docstring)."""
    if isinstance(node, list):
        return [to_structural(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return to_structural(merged, defs, key)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        if len(options) != 1:
            raise CrdGenError(f"cannot express union {node['anyOf']!r} structurally")
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        return to_structural({**options[0], **rest}, defs, key)
    out: Schema = {}
    for k, v in node.items():
        if k in ("title", "description", "$defs", "propertyNames", "patternProperties"):
            continue
        if k == "additionalProperties" and v is False:
            continue
        if k == "default" and (v is None or v == {} or v == []):
            continue
        if k == "const":
            out["enum"] = [v]
        elif k == "properties":
            out[k] = {name: to_structural(s, defs, name) for name, s in v.items()}
        elif k in ("items", "additionalProperties"):
            out[k] = to_structural(v, defs)
        else:
            out[k] = copy.deepcopy(v)
    if "patternProperties" in node:
        (pattern, value_schema), *more = node["patternProperties"].items()
        if more:
            raise CrdGenError("more than one key pattern in a map")
        out["additionalProperties"] = to_structural(value_schema, defs)
        names = node.get("propertyNames", {})
        limit = names.get("maxLength")
        size_rule = f"size(k) <= {limit} && " if limit else ""
        out.setdefault("x-kubernetes-validations", []).append(
            {
                "rule": f"self.all(k, {size_rule}k.matches('{_cel_string(pattern)}'))",
                "message": "keys must be valid label keys",
            }
        )
    if key in _MAP_LISTS and out.get("type") == "array":
        out["x-kubernetes-list-type"] = "map"
        out["x-kubernetes-list-map-keys"] = list(_MAP_LISTS[key])
    return out


def _at(schema: Schema, dotted: str) -> Schema:
    node = schema
    for part in dotted.split("."):
        try:
            if part.endswith("[]"):  # a list field: descend into its items
                node = node["properties"][part[:-2]]["items"]
            else:
                node = node["properties"][part]
        except KeyError:
            raise CrdGenError(f"CEL rule path {dotted!r} not found in the schema") from None
    return node


def openapi_schema(spec: CrdSpec) -> Schema:
    """The ``openAPIV3Schema`` of one CRD version."""
    raw = spec.model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    props = raw["properties"]
    schema: Schema = {
        "type": "object",
        "description": f"{spec.kind} ({spec.group}/{spec.version}), generated from "
        f"{spec.model.__module__}.{spec.model.__name__}.",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": to_structural(props["spec"], defs),
            "status": to_structural(props["status"], defs),
        },
        "required": ["spec"],
    }
    for path in _ATOMIC_LISTS.get((spec.kind, spec.version), ()):
        _at(schema, path)["x-kubernetes-list-type"] = "atomic"
    for path, rules in CEL_RULES.get((spec.kind, spec.version), {}).items():
        node = _at(schema, path)
        node.setdefault("x-kubernetes-validations", []).extend(
            {"rule": rule, "message": message} for rule, message in rules
        )
    return schema


def crd(spec: CrdSpec) -> Schema:
    """The full ``CustomResourceDefinition`` document."""
    metadata: Schema = {"name": spec.name}
    if spec.group.endswith(".k8s.io"):
        # *.k8s.io groups are protected; the API server requires this annotation.
        metadata["annotations"] = {"api-approved.kubernetes.io": _API_APPROVAL}
    names: Schema = {
        "kind": spec.kind,
        "listKind": f"{spec.kind}List",
        "plural": spec.plural,
        "singular": spec.kind.lower(),
    }
    if spec.short_names:
        names["shortNames"] = list(spec.short_names)
    version: Schema = {"name": spec.version}
    if spec.printer_columns:
        version["additionalPrinterColumns"] = [
            {"jsonPath": path, "name": name, "type": type_}
            for name, type_, path in spec.printer_columns
        ]
    version |= {
        "served": True,
        "storage": True,
        "schema": {"openAPIV3Schema": openapi_schema(spec)},
        "subresources": {"status": {}},
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": metadata,
        "spec": {
            "group": spec.group,
            "names": names,
            "scope": "Namespaced",
            "versions": [version],
        },
    }


def render(spec: CrdSpec) -> str:
    header = (
        "# Generated by `python -m kvroute.k8s.crdgen` from kvroute's API models; do not edit.\n"
    )
    return header + yaml.safe_dump(crd(spec), sort_keys=False, width=100)


def generate(out: Path) -> dict[Path, str]:
    """Path → expected file content for every CRD."""
    return {out / spec.filename: render(spec) for spec in CRDS}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kvroute.k8s.crdgen", description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the files differ; write nothing"
    )
    args = parser.parse_args(argv)
    stale = []
    for path, text in generate(args.out).items():
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if args.check and stale:
        print("stale CRDs (run `python -m kvroute.k8s.crdgen`):", *map(str, stale), sep="\n  ")
        return 1
    for path in stale:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
