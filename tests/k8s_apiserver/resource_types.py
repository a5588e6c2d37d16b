"""The resource types the fake API server knows, and its label/field selector matching.

The server is type-driven: every path is resolved against this table, so a manifest with a kind the
table lacks is rejected with 404 exactly as a real cluster without that CRD would reject it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ResourceType:
    """One served resource: ``group``/``version``/``plural`` locate it, ``kind`` names it."""

    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool = True
    has_status: bool = False
    short_names: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_version(self) -> str:
        return self.api_version

    @property
    def singular(self) -> str:
        return self.kind.lower()


INFERENCE_GROUP = "inference.networking.k8s.io"
INFERENCE_X_GROUP = "inference.networking.x-k8s.io"
LLM_D_GROUP = "llm-d.ai"

DEFAULT_TYPES: tuple[ResourceType, ...] = (
    ResourceType("", "v1", "Pod", "pods", has_status=True, short_names=("po",)),
    ResourceType("", "v1", "Service", "services", has_status=True, short_names=("svc",)),
    ResourceType("", "v1", "ConfigMap", "configmaps", short_names=("cm",)),
    ResourceType("", "v1", "ServiceAccount", "serviceaccounts", short_names=("sa",)),
    ResourceType("", "v1", "Secret", "secrets"),
    ResourceType("", "v1", "Namespace", "namespaces", namespaced=False, has_status=True),
    ResourceType("apps", "v1", "Deployment", "deployments", has_status=True),
    ResourceType("rbac.authorization.k8s.io", "v1", "Role", "roles"),
    ResourceType("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings"),
    ResourceType("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", False),
    ResourceType(
        "rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", False
    ),
    ResourceType("coordination.k8s.io", "v1", "Lease", "leases"),
    ResourceType(
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        namespaced=False,
        has_status=True,
        short_names=("crd",),
    ),
    ResourceType("gateway.networking.k8s.io", "v1", "GatewayClass", "gatewayclasses", False, True),
    ResourceType("gateway.networking.k8s.io", "v1", "Gateway", "gateways", True, True),
    ResourceType("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes", True, True),
    ResourceType(
        INFERENCE_GROUP, "v1", "InferencePool", "inferencepools", True, True, ("infpool",)
    ),
    ResourceType(INFERENCE_X_GROUP, "v1alpha2", "InferencePool", "inferencepools", True, True),
    ResourceType(INFERENCE_X_GROUP, "v1alpha2", "InferenceModel", "inferencemodels", True, True),
    ResourceType(
        INFERENCE_X_GROUP, "v1alpha2", "InferenceObjective", "inferenceobjectives", True, True
    ),
    ResourceType(
        INFERENCE_X_GROUP, "v1alpha2", "InferenceModelRewrite", "inferencemodelrewrites", True, True
    ),
)


class SelectorError(ValueError):
    """A label or field selector the server cannot parse (answered with HTTP 400)."""


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: frozenset[str]

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if self.op in ("=", "in"):
            return present and labels[self.key] in self.values
        # "!=" and "notin" match objects without the key, as in Kubernetes.
        return not present or labels[self.key] not in self.values


_SET_RE = re.compile(r"^([A-Za-z0-9_./-]+)\s+(in|notin)\s+\(([^)]*)\)$")


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside ``( … )`` (set-based requirements contain commas)."""
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def parse_selector(text: str | None) -> tuple[Requirement, ...]:
    """Parse a ``labelSelector``/``fieldSelector`` query value into requirements."""
    if not text:
        return ()
    reqs: list[Requirement] = []
    for part in _split_top_level(text):
        m = _SET_RE.match(part)
        if m:
            values = frozenset(v.strip() for v in m.group(3).split(",") if v.strip())
            reqs.append(Requirement(m.group(1), m.group(2), values))
        elif "!=" in part:
            k, v = part.split("!=", 1)
            reqs.append(Requirement(k.strip(), "!=", frozenset({v.strip()})))
        elif "==" in part:
            k, v = part.split("==", 1)
            reqs.append(Requirement(k.strip(), "=", frozenset({v.strip()})))
        elif "=" in part:
            k, v = part.split("=", 1)
            reqs.append(Requirement(k.strip(), "=", frozenset({v.strip()})))
        elif part.startswith("!"):
            reqs.append(Requirement(part[1:].strip(), "!exists", frozenset()))
        elif re.fullmatch(r"[A-Za-z0-9_./-]+", part):
            reqs.append(Requirement(part, "exists", frozenset()))
        else:
            raise SelectorError(f"unable to parse requirement: {part!r}")
    return tuple(reqs)


def labels_match(reqs: tuple[Requirement, ...], obj: Mapping[str, Any]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(r.matches(labels) for r in reqs)


def fields_match(reqs: tuple[Requirement, ...], obj: Mapping[str, Any]) -> bool:
    """Field selectors: only ``metadata.name`` and ``metadata.namespace`` (documented limit)."""
    meta = obj.get("metadata") or {}
    flat = {
        "metadata.name": str(meta.get("name", "")),
        "metadata.namespace": str(meta.get("namespace", "")),
    }
    for r in reqs:
        if r.key not in flat:
            raise SelectorError(f"field label not supported: {r.key}")
    return all(r.matches(flat) for r in reqs)


# llm-d-router's groups for InferenceObjective/InferenceModelRewrite; not in DEFAULT_TYPES, so a
# test chooses a cluster with the llm-d.ai CRDs installed.
LLM_D_TYPES: tuple[ResourceType, ...] = (
    ResourceType(LLM_D_GROUP, "v1alpha2", "InferenceObjective", "inferenceobjectives", True, True),
    ResourceType(
        LLM_D_GROUP, "v1alpha2", "InferenceModelRewrite", "inferencemodelrewrites", True, True
    ),
)
