"""The Kubernetes resource kinds the EPP reads and writes, as lightkube classes.

The Inference Extension kinds are CRDs, so they are lightkube *generic* resources (dict-like).
lightkube registers each class in its own registry when it is created; creating them here, once, at
import time, keeps one class per kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import Pod

GROUP_V1 = "inference.networking.k8s.io"
GROUP_X = "inference.networking.x-k8s.io"
GROUP_LLM_D = "llm-d.ai"  # InferenceObjective / InferenceModelRewrite since llm-d-router v0.10

InferencePoolV1: Any = create_namespaced_resource(GROUP_V1, "v1", "InferencePool", "inferencepools")
InferencePoolV1Alpha2: Any = create_namespaced_resource(
    GROUP_X, "v1alpha2", "InferencePool", "inferencepools"
)
InferenceModel: Any = create_namespaced_resource(
    GROUP_X, "v1alpha2", "InferenceModel", "inferencemodels"
)
InferenceObjective: Any = create_namespaced_resource(
    GROUP_X, "v1alpha2", "InferenceObjective", "inferenceobjectives"
)
InferenceModelRewrite: Any = create_namespaced_resource(
    GROUP_X, "v1alpha2", "InferenceModelRewrite", "inferencemodelrewrites"
)

InferenceObjectiveLlmD: Any = create_namespaced_resource(
    GROUP_LLM_D, "v1alpha2", "InferenceObjective", "inferenceobjectives"
)
InferenceModelRewriteLlmD: Any = create_namespaced_resource(
    GROUP_LLM_D, "v1alpha2", "InferenceModelRewrite", "inferencemodelrewrites"
)

POOL_KINDS: dict[str, Any] = {GROUP_V1: InferencePoolV1, GROUP_X: InferencePoolV1Alpha2}

__all__ = [
    "GROUP_LLM_D",
    "GROUP_V1",
    "GROUP_X",
    "POOL_KINDS",
    "InferenceModel",
    "InferenceModelRewrite",
    "InferenceModelRewriteLlmD",
    "InferenceObjective",
    "InferenceObjectiveLlmD",
    "InferencePoolV1",
    "InferencePoolV1Alpha2",
    "Lease",
    "Pod",
    "PoolRef",
    "lease_name",
]


@dataclass(frozen=True, slots=True)
class PoolRef:
    """The pool this EPP serves: ``--pool-name``, ``--pool-namespace``, ``--pool-group``."""

    name: str
    namespace: str = "default"
    group: str = GROUP_V1

    def __post_init__(self) -> None:
        if self.group not in POOL_KINDS:
            raise ValueError(f"unknown InferencePool group {self.group!r}; use one of {POOL_KINDS}")


def lease_name(pool: PoolRef) -> str:
    """The HA Lease name upstream uses, so mixed kvroute/upstream replicas never both lead."""
    return f"epp-{pool.namespace}-{pool.name}.gateway-api-inference-extension.sigs.k8s.io"


def as_dict(obj: Any) -> dict[str, Any]:
    """A plain-dict copy of a lightkube object (generic resources are dicts already)."""
    if isinstance(obj, dict):
        out = dict(obj)
        meta = out.get("metadata")
        if meta is not None and not isinstance(meta, dict):
            out["metadata"] = meta.to_dict()
        return out
    result: dict[str, Any] = obj.to_dict()
    return result
